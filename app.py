"""Gradient Flow Diagnostics dashboard: the router (page config, navigation, the shared sidebar)."""

import streamlit as st

from ui.common import sidebar_store_picker

st.set_page_config(page_title="Gradient Flow Diagnostics", page_icon="📉", layout="wide")

pages = [
    st.Page("pages/home.py", title="Runs", icon="🗂️", default=True),
]
navigation = st.navigation(pages)
sidebar_store_picker()
navigation.run()
