"""Gradient Flow Diagnostics dashboard: the router (page config, navigation, the shared sidebar)."""

import streamlit as st

from ui.access import gate
from ui.common import mark_routed, sidebar_store_picker

st.set_page_config(page_title="Gradient Flow Diagnostics", page_icon=":material/show_chart:", layout="wide")
gate()                  # a Host not served, or no token when one is required: the script stops here
mark_routed()

pages = [
    st.Page("pages/home.py", title="Runs", icon=":material/folder_open:", default=True),
    st.Page("pages/gradient_flow.py", title="Gradient flow", icon=":material/show_chart:"),
    st.Page("pages/kernels.py", title="Kernel heatmaps", icon=":material/grid_on:"),
    st.Page("pages/compare.py", title="Compare training", icon=":material/compare_arrows:"),
    st.Page("pages/checks.py", title="Gradient checks", icon=":material/rule:"),
    st.Page("pages/checkpoint.py", title="Checkpoint", icon=":material/upload_file:"),
]
navigation = st.navigation(pages)
sidebar_store_picker()
navigation.run()
