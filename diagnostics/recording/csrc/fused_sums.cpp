// Fused one-pass reductions for GradientMonitor on CPU, a PyTorch C++ extension (built by native.py).
//
// The pure-PyTorch path in stats.py spends one pass over a tensor per statistic (sum, dot, sign, abs, amax).
// Here every statistic of a tensor comes from one read of it:
//
//   act_sums(x, out, row)    x (n,)  -> out[row] = [Σx, Σx², #nonzero, #NaN/Inf]
//   grad_sums(g, out, row)   g (n,)  -> out[row] = [Σ|g|, Σg², max|g|, #NaN/Inf]  (max is NaN when g holds NaN)
//   param_sums(gs, ws)       k pairs -> (k, 4) [Σ|g|, Σg², max|g|, Σw²]  (a missing w gives NaN)
//   diff_sums(as, bs)        k pairs -> (k,) ‖a - b‖² (the size of an optimizer step, a - b never written)
//
// Every argument is an at::Tensor checked with TORCH_CHECK, so a tensor the kernels cannot read (another device,
// dtype or layout, strided, a subclass without storage) raises a RuntimeError instead of corrupting memory.
// A finite Σx² proves every element finite, so the NaN/Inf count costs a second pass only when it is not.
//
// Work is split into CHUNK-long items run by at::parallel_for on PyTorch's own thread pool. Each item sums
// BLOCK elements at a time in the tensor's precision over LANES independent accumulators (vectorised, no
// serial dependency), then adds the block into double; items are combined in a fixed order, so results do not
// depend on the number of threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/graph_task.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t CHUNK = 16384;
constexpr int64_t BLOCK = 2048;
constexpr int LANES = 32;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// One build runs on any x86-64 CPU: the loader picks the widest vector unit at run time.
#define VECTORISED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTORISED
#endif

#define DEFINE_CHUNKS(T, SUF)                                                                               \
VECTORISED void act_chunk_##SUF(const T *p, int64_t m, double *out) {                                     \
    double S = 0, Q = 0, Z = 0;                                                                           \
    for (int64_t b = 0; b < m; b += BLOCK) {                                                              \
        int64_t e = std::min(b + BLOCK, m), i = b;                                                        \
        T s[LANES] = {0}, q[LANES] = {0}, z[LANES] = {0};                                                 \
        for (; i + LANES <= e; i += LANES)                                                                \
            for (int j = 0; j < LANES; j++) {                                                             \
                T v = p[i + j];                                                                           \
                s[j] += v; q[j] += v * v; z[j] += v != 0 ? (T)1 : (T)0;                                   \
            }                                                                                             \
        for (; i < e; i++) { T v = p[i]; s[0] += v; q[0] += v * v; z[0] += v != 0 ? (T)1 : (T)0; }        \
        for (int j = 0; j < LANES; j++) { S += s[j]; Q += q[j]; Z += z[j]; }                              \
    }                                                                                                     \
    out[0] = S; out[1] = Q; out[2] = Z;                                                                   \
}                                                                                                         \
                                                                                                          \
VECTORISED void grad_chunk_##SUF(const T *p, int64_t m, double *out) {                                    \
    double S = 0, Q = 0, M = 0;                                                                           \
    for (int64_t b = 0; b < m; b += BLOCK) {                                                              \
        int64_t e = std::min(b + BLOCK, m), i = b;                                                        \
        T s[LANES] = {0}, q[LANES] = {0}, x[LANES] = {0};                                                 \
        for (; i + LANES <= e; i += LANES)                                                                \
            for (int j = 0; j < LANES; j++) {                                                             \
                T a = std::abs(p[i + j]);                                                                 \
                s[j] += a; q[j] += a * a; x[j] = x[j] > a ? x[j] : a;                                     \
            }                                                                                             \
        for (; i < e; i++) { T a = std::abs(p[i]); s[0] += a; q[0] += a * a; x[0] = x[0] > a ? x[0] : a; } \
        for (int j = 0; j < LANES; j++) { S += s[j]; Q += q[j]; M = M > x[j] ? M : x[j]; }                \
    }                                                                                                     \
    out[0] = S; out[1] = Q; out[2] = M;                                                                   \
}                                                                                                         \
                                                                                                          \
VECTORISED double sq_chunk_##SUF(const T *p, int64_t m) {                                                 \
    double Q = 0;                                                                                         \
    for (int64_t b = 0; b < m; b += BLOCK) {                                                              \
        int64_t e = std::min(b + BLOCK, m), i = b;                                                        \
        T q[LANES] = {0};                                                                                 \
        for (; i + LANES <= e; i += LANES)                                                                \
            for (int j = 0; j < LANES; j++) { T v = p[i + j]; q[j] += v * v; }                            \
        for (; i < e; i++) { T v = p[i]; q[0] += v * v; }                                                 \
        for (int j = 0; j < LANES; j++) Q += q[j];                                                        \
    }                                                                                                     \
    return Q;                                                                                             \
}                                                                                                         \
                                                                                                          \
VECTORISED double diff_chunk_##SUF(const T *a, const T *b, int64_t m) {                                   \
    double Q = 0;                                                                                         \
    for (int64_t o = 0; o < m; o += BLOCK) {                                                              \
        int64_t e = std::min(o + BLOCK, m), i = o;                                                        \
        T q[LANES] = {0};                                                                                 \
        for (; i + LANES <= e; i += LANES)                                                                \
            for (int j = 0; j < LANES; j++) { T d = a[i + j] - b[i + j]; q[j] += d * d; }                 \
        for (; i < e; i++) { T d = a[i] - b[i]; q[0] += d * d; }                                          \
        for (int j = 0; j < LANES; j++) Q += q[j];                                                        \
    }                                                                                                     \
    return Q;                                                                                             \
}

DEFINE_CHUNKS(float, f32)
DEFINE_CHUNKS(double, f64)

inline void act_chunk(const float *p, int64_t m, double *out) { act_chunk_f32(p, m, out); }
inline void act_chunk(const double *p, int64_t m, double *out) { act_chunk_f64(p, m, out); }
inline void grad_chunk(const float *p, int64_t m, double *out) { grad_chunk_f32(p, m, out); }
inline void grad_chunk(const double *p, int64_t m, double *out) { grad_chunk_f64(p, m, out); }
inline double sq_chunk(const float *p, int64_t m) { return sq_chunk_f32(p, m); }
inline double sq_chunk(const double *p, int64_t m) { return sq_chunk_f64(p, m); }
inline double diff_chunk(const float *a, const float *b, int64_t m) { return diff_chunk_f32(a, b, m); }
inline double diff_chunk(const double *a, const double *b, int64_t m) { return diff_chunk_f64(a, b, m); }

void check_readable(const at::Tensor &x, const char *what) {
    TORCH_CHECK(x.device().is_cpu(), what, " must be a CPU tensor, got ", x.device());
    TORCH_CHECK(x.layout() == at::kStrided, what, " must be a dense (strided) tensor, got ", x.layout());
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, what,
                " must be float32 or float64, got ", x.scalar_type());
    TORCH_CHECK(x.is_contiguous(), what, " must be contiguous");
    TORCH_CHECK(!x.is_neg() && !x.is_conj(), what, " must not be a lazy negation or conjugate view");
    TORCH_CHECK(x.numel() == 0 || x.has_storage(), what, " has no storage (a tensor subclass?)");
}

int64_t chunks_of(int64_t n) { return (n + CHUNK - 1) / CHUNK; }

template <typename T>
double nonfinite_count(const T *x, int64_t n) {
    std::vector<int64_t> part(static_cast<size_t>(std::max<int64_t>(chunks_of(n), 1)), 0);
    at::parallel_for(0, chunks_of(n), 1, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; c++) {
            int64_t count = 0, stop = std::min((c + 1) * CHUNK, n);
            for (int64_t i = c * CHUNK; i < stop; i++) count += std::isfinite(x[i]) ? 0 : 1;
            part[c] = count;
        }
    });
    int64_t total = 0;
    for (int64_t c : part) total += c;
    return static_cast<double>(total);
}

// Reduce n elements chunk by chunk (in parallel when there are several), combined in chunk order.
template <typename T>
void reduce_one(const T *x, int64_t n, double *out, bool is_grad) {
    int64_t chunks = chunks_of(n);
    std::vector<double> part(static_cast<size_t>(3 * std::max<int64_t>(chunks, 1)), 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; c++) {
            int64_t m = std::min(CHUNK, n - c * CHUNK);
            if (is_grad) grad_chunk(x + c * CHUNK, m, part.data() + 3 * c);
            else act_chunk(x + c * CHUNK, m, part.data() + 3 * c);
        }
    });
    double a = 0, b = 0, z = 0;
    for (int64_t c = 0; c < chunks; c++) {
        const double *p = part.data() + 3 * c;
        a += p[0]; b += p[1];
        z = is_grad ? (z > p[2] ? z : p[2]) : z + p[2];
    }
    if (is_grad && std::isnan(b)) z = NAN;
    out[0] = a; out[1] = b; out[2] = z; out[3] = std::isfinite(b) ? 0 : nonfinite_count(x, n);
}

void reduce_into(const at::Tensor &x, at::Tensor &out, int64_t row, bool is_grad) {
    check_readable(x, is_grad ? "the gradient" : "the activation");
    TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kDouble && out.is_contiguous() &&
                out.dim() == 2 && out.size(1) == 4, "out must be a contiguous CPU float64 tensor of shape (rows, 4)");
    TORCH_CHECK(row >= 0 && row < out.size(0), "row ", row, " is outside out's ", out.size(0), " rows");
    double *o = out.data_ptr<double>() + 4 * row;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "reduce_into", [&] {
        reduce_one<scalar_t>(x.data_ptr<scalar_t>(), x.numel(), o, is_grad);
    });
}

void act_sums(const at::Tensor &x, at::Tensor out, int64_t row) { reduce_into(x, out, row, false); }
void grad_sums(const at::Tensor &g, at::Tensor out, int64_t row) { reduce_into(g, out, row, true); }

// (parameter, first element) of every CHUNK-long item of k tensors of lengths n_i.
std::vector<std::pair<int64_t, int64_t>> items_of(const std::vector<int64_t> &n) {
    std::vector<std::pair<int64_t, int64_t>> items;
    for (int64_t i = 0; i < static_cast<int64_t>(n.size()); i++)
        for (int64_t s = 0; s < n[i]; s += CHUNK) items.emplace_back(i, s);
    return items;
}

// All parameters of a step in one parallel loop over (parameter, chunk) items.
at::Tensor param_sums(const std::vector<at::Tensor> &grads, const std::vector<c10::optional<at::Tensor>> &weights) {
    TORCH_CHECK(grads.size() == weights.size(), "param_sums needs one weight (or None) per gradient");
    int64_t k = static_cast<int64_t>(grads.size());
    at::Tensor out = at::zeros({k, 4}, at::TensorOptions().dtype(at::kDouble));
    if (k == 0) return out;
    auto dtype = grads[0].scalar_type();
    std::vector<int64_t> n(k);
    for (int64_t i = 0; i < k; i++) {
        check_readable(grads[i], "a gradient");
        TORCH_CHECK(grads[i].scalar_type() == dtype, "param_sums: all gradients must share one dtype");
        n[i] = grads[i].numel();
        if (weights[i].has_value()) {
            const at::Tensor &w = *weights[i];
            check_readable(w, "a weight");
            TORCH_CHECK(w.scalar_type() == dtype && w.numel() == n[i], "a weight must match its gradient's dtype "
                        "and size");
        }
    }
    auto items = items_of(n);
    std::vector<double> part(5 * std::max<size_t>(items.size(), 1), 0.0);
    double *o = out.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES(dtype, "param_sums", [&] {
        std::vector<const scalar_t *> g(k), w(k);
        for (int64_t i = 0; i < k; i++) {
            g[i] = grads[i].data_ptr<scalar_t>();
            w[i] = weights[i].has_value() ? weights[i]->data_ptr<scalar_t>() : nullptr;
        }
        at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
            for (int64_t it = begin; it < end; it++) {
                int64_t i = items[it].first, s = items[it].second, m = std::min(CHUNK, n[i] - s);
                grad_chunk(g[i] + s, m, part.data() + 5 * it);
                part[5 * it + 4] = w[i] != nullptr ? sq_chunk(w[i] + s, m) : 0.0;
            }
        });
    });
    for (size_t it = 0; it < items.size(); it++) {
        double *r = o + 4 * items[it].first, *p = part.data() + 5 * it;
        r[0] += p[0]; r[1] += p[1]; r[2] = r[2] > p[2] ? r[2] : p[2]; r[3] += p[4];
    }
    for (int64_t i = 0; i < k; i++) {
        if (std::isnan(o[4 * i + 1])) o[4 * i + 2] = NAN;
        if (!weights[i].has_value()) o[4 * i + 3] = NAN;
    }
    return out;
}

bool kernel_readable(const at::Tensor &x);

// The common case of a step's parameters in one call: every parameter whose gradient (and, with weight_norms,
// whose weight: same dtype and size) the kernels can read, reduced as param_sums does; its row of the (k, 4)
// result and `taken` true. The others (no gradient, another device or dtype, sparse, a tensor subclass that
// dispatches in Python such as DTensor, ...) get a NaN row and `taken` false: the caller reduces them.
std::tuple<at::Tensor, at::Tensor> param_sums_of(const std::vector<at::Tensor> &params, bool weight_norms) {
    int64_t k = static_cast<int64_t>(params.size());
    at::Tensor out = at::full({k, 4}, NAN, at::TensorOptions().dtype(at::kDouble));
    at::Tensor taken = at::zeros({k}, at::TensorOptions().dtype(at::kBool));
    std::vector<at::Tensor> grads(k);
    std::vector<int64_t> n(k, 0);
    bool *ok = taken.data_ptr<bool>();
    auto python = c10::DispatchKeySet(c10::DispatchKey::Python);
    for (int64_t i = 0; i < k; i++) {
        const at::Tensor &w = params[i];
        if (!w.defined()) continue;
        at::Tensor g = w.grad();
        if (!g.defined() || !kernel_readable(g) || (g.key_set() & python) != c10::DispatchKeySet()) continue;
        if (weight_norms && (!kernel_readable(w) || (w.key_set() & python) != c10::DispatchKeySet() ||
                             w.scalar_type() != g.scalar_type() || w.numel() != g.numel()))
            continue;
        grads[i] = g;
        n[i] = g.numel();
        ok[i] = true;
    }
    auto items = items_of(n);
    std::vector<double> part(5 * std::max<size_t>(items.size(), 1), 0.0);
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
        for (int64_t it = begin; it < end; it++) {
            int64_t i = items[it].first, s = items[it].second, m = std::min(CHUNK, n[i] - s);
            double *r = part.data() + 5 * it;
            if (grads[i].scalar_type() == at::kFloat) {
                grad_chunk(grads[i].data_ptr<float>() + s, m, r);
                r[4] = weight_norms ? sq_chunk(params[i].data_ptr<float>() + s, m) : 0.0;
            } else {
                grad_chunk(grads[i].data_ptr<double>() + s, m, r);
                r[4] = weight_norms ? sq_chunk(params[i].data_ptr<double>() + s, m) : 0.0;
            }
        }
    });
    double *o = out.data_ptr<double>();
    for (int64_t i = 0; i < k; i++)
        if (ok[i]) { o[4 * i] = 0; o[4 * i + 1] = 0; o[4 * i + 2] = 0; o[4 * i + 3] = 0; }
    for (size_t it = 0; it < items.size(); it++) {
        double *r = o + 4 * items[it].first, *p = part.data() + 5 * it;
        r[0] += p[0]; r[1] += p[1]; r[2] = r[2] > p[2] ? r[2] : p[2]; r[3] += p[4];
    }
    for (int64_t i = 0; i < k; i++) {
        if (!ok[i]) continue;
        if (std::isnan(o[4 * i + 1])) o[4 * i + 2] = NAN;
        if (!weight_norms) o[4 * i + 3] = NAN;
    }
    return {out, taken};
}

// ‖a_i - b_i‖² of k pairs (weights after and before an optimizer step) without writing a - b.
at::Tensor diff_sums(const std::vector<at::Tensor> &after, const std::vector<at::Tensor> &before) {
    TORCH_CHECK(after.size() == before.size(), "diff_sums needs pairs of tensors");
    int64_t k = static_cast<int64_t>(after.size());
    at::Tensor out = at::zeros({k}, at::TensorOptions().dtype(at::kDouble));
    if (k == 0) return out;
    auto dtype = after[0].scalar_type();
    std::vector<int64_t> n(k);
    for (int64_t i = 0; i < k; i++) {
        check_readable(after[i], "a tensor");
        check_readable(before[i], "a tensor");
        TORCH_CHECK(after[i].scalar_type() == dtype && before[i].scalar_type() == dtype &&
                    before[i].numel() == after[i].numel(), "diff_sums: pairs must share one dtype and size");
        n[i] = after[i].numel();
    }
    auto items = items_of(n);
    std::vector<double> part(std::max<size_t>(items.size(), 1), 0.0);
    AT_DISPATCH_FLOATING_TYPES(dtype, "diff_sums", [&] {
        std::vector<const scalar_t *> a(k), b(k);
        for (int64_t i = 0; i < k; i++) {
            a[i] = after[i].data_ptr<scalar_t>();
            b[i] = before[i].data_ptr<scalar_t>();
        }
        at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
            for (int64_t it = begin; it < end; it++) {
                int64_t i = items[it].first, s = items[it].second;
                part[it] = diff_chunk(a[i] + s, b[i] + s, std::min(CHUNK, n[i] - s));
            }
        });
    });
    double *o = out.data_ptr<double>();
    for (size_t it = 0; it < items.size(); it++) o[items[it].first] += part[it];
    return out;
}

// ---------------------------------------------------------------------------------------------------------
// Output-gradient hooks registered from C++: backward runs no Python for them.
//
// GradWatch::watch(out, layer, pass) registers a C++ tensor hook on `out` (the same kind of tensor pre-hook
// as Tensor.register_hook, on the same grad_fn, so an in-place op after it does not move it). When backward
// reaches `out`, the hook reduces the gradient as grad_sums does and appends [Σ|g|, Σg², max|g|, #NaN/Inf]
// with (layer, pass, order, numel) to a log that take() hands to Python once per step. A hook of an older
// generation (begin() starts a new one at every step) appends nothing. A hook never throws into backward: a
// gradient the kernels cannot read is reduced from a float64 copy, and any failure logs NaN sums.
//
// GradWatch::forward(out, layer, training) is a leaf's whole forward hook on the common path: during the model's
// pass (set_pass), outside backward, with gradients on, for a tensor the kernels can read, it reduces `out` as
// act_sums does, logs the sums with (layer, pass, order, numel, training, tracked) for take_forward(), and
// watches `out`'s gradient when it requires one. It returns false, doing nothing, for every other call: the
// Python hook then takes it (no_grad calls, recomputations in backward, calls outside the model, ...).
struct WatchLog {
    std::mutex mu;
    int64_t generation = -1;
    int64_t seq = 0;                       // backward order within the generation (shared with Python hooks)
    std::vector<double> rows;              // 4 per entry
    std::vector<int64_t> meta;             // 4 per entry: layer, pass, seq, numel
    int64_t pass = -1;                     // the model's forward pass under way (-1: none; Python takes calls)
    int64_t forward_seq = 0;               // forward order within the generation (shared with Python hooks)
    std::vector<double> forward_rows;      // 4 per forward entry: [Σx, Σx², #nonzero, #NaN/Inf]
    std::vector<int64_t> forward_meta;     // 6 per forward entry: layer, pass, seq, numel, training, tracked
    int64_t counted = 0;                   // gradients of counted tensors (parameters) since the last take
};

bool kernel_readable(const at::Tensor &x) {
    return x.device().is_cpu() && x.layout() == at::kStrided &&
           (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) && x.is_contiguous() &&
           !x.is_neg() && !x.is_conj() && (x.numel() == 0 || x.has_storage());
}

void reduce_gradient(const at::Tensor &g, double *out) {
    if (kernel_readable(g)) {
        AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "watch", [&] {
            reduce_one<scalar_t>(g.data_ptr<scalar_t>(), g.numel(), out, true);
        });
        return;
    }
    at::Tensor d = g.detach().to(at::kCPU, at::kDouble).resolve_conj().resolve_neg().contiguous();
    reduce_one<double>(d.data_ptr<double>(), d.numel(), out, true);
}

class GradWatch {
  public:
    GradWatch() : log_(std::make_shared<WatchLog>()) {}

    void begin(int64_t generation) {
        std::lock_guard<std::mutex> lock(log_->mu);
        log_->generation = generation;
        log_->seq = 0;
        log_->rows.clear();
        log_->meta.clear();
        log_->pass = -1;
        log_->forward_seq = 0;
        log_->forward_rows.clear();
        log_->forward_meta.clear();
    }

    void set_pass(int64_t pass) {
        std::lock_guard<std::mutex> lock(log_->mu);
        log_->pass = pass;
    }

    int64_t next_forward_seq() {
        std::lock_guard<std::mutex> lock(log_->mu);
        return ++log_->forward_seq;
    }

    bool forward(const at::Tensor &out, int64_t layer, bool training) {
        int64_t pass;
        {
            std::lock_guard<std::mutex> lock(log_->mu);
            pass = log_->pass;
        }
        if (pass < 0 || !at::GradMode::is_enabled() || torch::autograd::get_current_graph_task_id() != -1 ||
            !kernel_readable(out))
            return false;
        double r[4];
        AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "forward", [&] {
            reduce_one<scalar_t>(out.data_ptr<scalar_t>(), out.numel(), r, false);
        });
        bool tracked = out.requires_grad();
        {
            std::lock_guard<std::mutex> lock(log_->mu);
            log_->forward_rows.insert(log_->forward_rows.end(), r, r + 4);
            int64_t m[6] = {layer, pass, ++log_->forward_seq, out.numel(), training, tracked};
            log_->forward_meta.insert(log_->forward_meta.end(), m, m + 6);
        }
        if (tracked) watch(out, layer, pass);
        return true;
    }

    // The forward entries since begin(): (n, 4) float64 sums and (n, 6) int64 (layer, pass, order, numel,
    // training, tracked); cleared.
    std::tuple<at::Tensor, at::Tensor> take_forward() {
        std::lock_guard<std::mutex> lock(log_->mu);
        return taken(log_->forward_rows, log_->forward_meta, 6);
    }

    int64_t next_seq() {
        std::lock_guard<std::mutex> lock(log_->mu);
        return ++log_->seq;
    }

    void watch(const at::Tensor &out, int64_t layer, int64_t pass) {
        TORCH_CHECK(out.requires_grad(), "watch: the tensor does not require a gradient");
        int64_t generation;
        {
            std::lock_guard<std::mutex> lock(log_->mu);
            generation = log_->generation;
        }
        std::shared_ptr<WatchLog> log = log_;
        out.register_hook([log, generation, layer, pass](const at::TensorBase &base) {
            if (!base.defined()) return;
            double r[4] = {NAN, NAN, NAN, NAN};
            int64_t numel = base.numel();
            try {
                reduce_gradient(at::Tensor(base), r);
            } catch (...) {                // never into backward: the statistics of this call are unknown
                r[0] = r[1] = r[2] = r[3] = NAN;
            }
            std::lock_guard<std::mutex> lock(log->mu);
            if (log->generation != generation) return;
            log->rows.insert(log->rows.end(), r, r + 4);
            int64_t m[4] = {layer, pass, ++log->seq, numel};
            log->meta.insert(log->meta.end(), m, m + 4);
        });
    }

    // Count every gradient computed for `param` (a parameter: backward reached it), for take_counted(); the
    // hook's position, for uncount().
    int64_t count(const at::Tensor &param) {
        TORCH_CHECK(param.requires_grad(), "count: the tensor does not require a gradient");
        std::shared_ptr<WatchLog> log = log_;
        return param.register_hook([log](const at::TensorBase &) {
            std::lock_guard<std::mutex> lock(log->mu);
            log->counted++;
        });
    }

    void uncount(const at::Tensor &param, int64_t position) { param.remove_hook(static_cast<unsigned>(position)); }

    int64_t take_counted() {
        std::lock_guard<std::mutex> lock(log_->mu);
        int64_t n = log_->counted;
        log_->counted = 0;
        return n;
    }

    // The entries since begin(): (n, 4) float64 sums and (n, 4) int64 (layer, pass, order, numel); cleared.
    std::tuple<at::Tensor, at::Tensor> take() {
        std::lock_guard<std::mutex> lock(log_->mu);
        return taken(log_->rows, log_->meta, 4);
    }

  private:
    // A log's entries as ((n, 4) float64 sums, (n, width) int64 metadata); the log is cleared. Hold the lock.
    static std::tuple<at::Tensor, at::Tensor> taken(std::vector<double> &sums, std::vector<int64_t> &meta,
                                                    int64_t width) {
        int64_t n = static_cast<int64_t>(meta.size()) / width;
        at::Tensor rows = at::empty({n, 4}, at::TensorOptions().dtype(at::kDouble));
        at::Tensor info = at::empty({n, width}, at::TensorOptions().dtype(at::kLong));
        if (n) {
            std::copy(sums.begin(), sums.end(), rows.data_ptr<double>());
            std::copy(meta.begin(), meta.end(), info.data_ptr<int64_t>());
        }
        sums.clear();
        meta.clear();
        return {rows, info};
    }

    std::shared_ptr<WatchLog> log_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    py::class_<GradWatch>(m, "GradWatch", "Output-gradient hooks registered from C++ (see fused_sums.cpp)")
        .def(py::init<>())
        .def("begin", &GradWatch::begin, "start a new generation: older hooks log nothing; the log is cleared")
        .def("next_seq", &GradWatch::next_seq, "the next backward order number (for hooks run in Python)")
        .def("watch", &GradWatch::watch, "reduce out's gradient in backward into the log (layer, pass ids)")
        .def("take", &GradWatch::take, "the log since begin() as ((n, 4) float64, (n, 4) int64); cleared")
        .def("count", &GradWatch::count, "count every gradient computed for a parameter (any generation)")
        .def("uncount", &GradWatch::uncount, "remove a hook of count() (its position)")
        .def("take_counted", &GradWatch::take_counted, "the gradients counted since the last call")
        .def("set_pass", &GradWatch::set_pass, "the model's forward pass under way (-1: none)")
        .def("next_forward_seq", &GradWatch::next_forward_seq, "the next forward order number (Python hooks)")
        .def("forward", &GradWatch::forward, "a leaf's forward hook on the common path; false: not taken")
        .def("take_forward", &GradWatch::take_forward,
             "the forward log since begin() as ((n, 4) float64, (n, 6) int64); cleared");
    m.doc() = "Fused one-pass reductions of diagnostics.recording (see fused_sums.cpp)";
    m.def("act_sums", &act_sums, "[Σx, Σx², #nonzero, #NaN/Inf] of x into out[row]");
    m.def("grad_sums", &grad_sums, "[Σ|g|, Σg², max|g|, #NaN/Inf] of g into out[row]");
    m.def("param_sums_of", &param_sums_of, "[Σ|g|, Σg², max|g|, Σw²] of every parameter the kernels can read, "
          "read from param.grad: ((k, 4) float64, (k,) bool taken)");
    m.def("param_sums", &param_sums, "[Σ|g|, Σg², max|g|, Σw²] of k (gradient, weight) pairs: (k, 4) float64");
    m.def("diff_sums", &diff_sums, "‖a - b‖² of k pairs: (k,) float64");
}
