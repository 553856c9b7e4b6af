// The time loops of the `cpu` backend, compiled: per step one GEMM through ATen (MKL/oneDNN) and
// one fused, vectorised pass for all the pointwise work, in place in the caller's buffers. The
// Python twins are the _*_forward_loop / _*_backward_loop functions in gatedrnn/backends/cpu.py;
// the buffer contracts are documented there. Built on first use by torch.utils.cpp_extension.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace {

using at::Tensor;
template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + x.neg().exp());
}

// Calls f(begin, end) over rows [0, n), in parallel once a chunk holds enough elements.
template <typename F>
inline void for_rows(int64_t n, int64_t width, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(width, 1));
  at::parallel_for(0, n, grain, f);
}

// Calls f(j, count) over the columns [0, H) one vector at a time (the last one partial).
template <typename T, typename F>
inline void for_columns(int64_t H, const F& f) {
  constexpr int64_t width = Vec<T>::size();
  for (int64_t j = 0; j < H; j += width) f(j, std::min<int64_t>(width, H - j));
}

inline int64_t live(const std::vector<int64_t>& batch_sizes, int64_t t, int64_t B) {
  return batch_sizes.empty() ? B : batch_sizes[t];
}

template <typename T>
inline Vec<T> load(const T* p, int64_t count) {
  return count == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, count);
}

template <typename T>
inline void store(const Vec<T>& v, T* p, int64_t count) {
  if (count == Vec<T>::size()) {
    v.store(p);
  } else {
    v.store(p, count);
  }
}

void addmm_into(Tensor& out, const c10::optional<Tensor>& bias, const Tensor& a, const Tensor& b) {
  if (bias.has_value()) {
    at::addmm_out(out, *bias, a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

template <typename T>
void gru_forward_impl(Tensor& gates, Tensor& out, Tensor& rec, const Tensor& h0, const Tensor& w_hh,
             const c10::optional<Tensor>& b_hh, const std::vector<int64_t>& batch_sizes,
             bool reset_after) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  const Tensor w_t = w_hh.t();
  const Tensor w_rz_t = w_t.narrow(1, 0, 2 * H), w_n_t = w_t.narrow(1, 2 * H, H);
  c10::optional<Tensor> b_rz, b_n;
  if (b_hh.has_value()) {
    b_rz = b_hh->narrow(0, 0, 2 * H);
    b_n = b_hh->narrow(0, 2 * H, H);
  }
  Tensor scratch = at::empty({B, 3 * H}, gates.options());  // W_hh h + b_hh, or its r|z part
  Tensor scratch_n = at::empty({B, H}, gates.options());  // before: W_hn (r ⊙ h) + b_hn
  T* g_all = gates.data_ptr<T>();
  T* out_all = out.data_ptr<T>();
  T* rec_all = rec.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = live(batch_sizes, t, B);
    const Tensor h_prev = (t == 0 ? h0 : out.select(0, t - 1)).narrow(0, 0, n);
    const T* hp = h_prev.data_ptr<T>();
    T* g = g_all + t * B * 3 * H;
    T* o = out_all + t * B * H;
    T* rc = rec_all + t * B * H;
    if (reset_after) {
      Tensor gh = scratch.narrow(0, 0, n);
      addmm_into(gh, b_hh, h_prev, w_t);
      const T* ghp = gh.data_ptr<T>();
      for_rows(n, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* gr = g + b * 3 * H;
          const T* hr = ghp + b * 3 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> r = sigmoid(load(gr + j, c) + load(hr + j, c));
            const Vec<T> z = sigmoid(load(gr + H + j, c) + load(hr + H + j, c));
            const Vec<T> hn = load(hr + 2 * H + j, c);
            const Vec<T> cand = (load(gr + 2 * H + j, c) + r * hn).tanh();
            const Vec<T> h = load(hp + b * H + j, c);
            store(r, gr + j, c);
            store(z, gr + H + j, c);
            store(cand, gr + 2 * H + j, c);
            store(hn, rc + b * H + j, c);
            store(cand + z * (h - cand), o + b * H + j, c);  // (1 − z) ⊙ n + z ⊙ h
          });
        }
      });
    } else {
      // the first n·2H elements of the scratch buffer, as a contiguous (n, 2H) matrix
      Tensor gh_rz = scratch.view({-1}).narrow(0, 0, n * 2 * H).view({n, 2 * H});
      addmm_into(gh_rz, b_rz, h_prev, w_rz_t);
      const T* ghp = gh_rz.data_ptr<T>();
      for_rows(n, 2 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* gr = g + b * 3 * H;
          const T* hr = ghp + b * 2 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> r = sigmoid(load(gr + j, c) + load(hr + j, c));
            const Vec<T> z = sigmoid(load(gr + H + j, c) + load(hr + H + j, c));
            store(r, gr + j, c);
            store(z, gr + H + j, c);
            store(r * load(hp + b * H + j, c), rc + b * H + j, c);  // r ⊙ h
          });
        }
      });
      Tensor gh_n = scratch_n.narrow(0, 0, n);
      addmm_into(gh_n, b_n, rec.select(0, t).narrow(0, 0, n), w_n_t);
      const T* ghn = gh_n.data_ptr<T>();
      for_rows(n, H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* gr = g + b * 3 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> cand = (load(gr + 2 * H + j, c) + load(ghn + b * H + j, c)).tanh();
            const Vec<T> z = load(gr + H + j, c);
            const Vec<T> h = load(hp + b * H + j, c);
            store(cand, gr + 2 * H + j, c);
            store(cand + z * (h - cand), o + b * H + j, c);
          });
        }
      });
    }
  }
}

template <typename T>
void gru_backward_impl(const Tensor& grad_out, Tensor& dh, const Tensor& gates, const Tensor& rec,
              const Tensor& out, const Tensor& h0, const Tensor& w_hh, Tensor& dgates,
              c10::optional<Tensor> dn_all, const std::vector<int64_t>& batch_sizes,
              bool reset_after) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  const Tensor w_rz = w_hh.narrow(0, 0, 2 * H), w_n = w_hh.narrow(0, 2 * H, H);
  Tensor scratch = at::empty({B, H}, gates.options());
  const T* go_all = grad_out.data_ptr<T>();
  const T* g_all = gates.data_ptr<T>();
  const T* rec_all = rec.data_ptr<T>();
  T* dg_all = dgates.data_ptr<T>();
  T* dn_base = dn_all.has_value() ? dn_all->data_ptr<T>() : nullptr;
  T* dhp = dh.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = live(batch_sizes, t, B);
    const Tensor h_prev = (t == 0 ? h0 : out.select(0, t - 1)).narrow(0, 0, n);
    const T* hp = h_prev.data_ptr<T>();
    const T* go = go_all + t * B * H;
    const T* g = g_all + t * B * 3 * H;
    T* dg = dg_all + t * B * 3 * H;
    Tensor dh_live = dh.narrow(0, 0, n);
    Tensor dg_t = dgates.select(0, t).narrow(0, 0, n);
    if (reset_after) {
      const T* rc = rec_all + t * B * H;
      T* dn_t = dn_base + t * B * H;
      for_rows(n, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* gr = g + b * 3 * H;
          T* dgr = dg + b * 3 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> one(T(1));
            const Vec<T> grad = load(dhp + b * H + j, c) + load(go + b * H + j, c);
            const Vec<T> r = load(gr + j, c), z = load(gr + H + j, c);
            const Vec<T> cand = load(gr + 2 * H + j, c);
            const Vec<T> h = load(hp + b * H + j, c);
            const Vec<T> dn = grad * (one - z) * (one - cand * cand);
            store(dn * load(rc + b * H + j, c) * r * (one - r), dgr + j, c);
            store(grad * (h - cand) * z * (one - z), dgr + H + j, c);
            store(dn * r, dgr + 2 * H + j, c);
            store(dn, dn_t + b * H + j, c);
            store(grad * z, dhp + b * H + j, c);  // the direct path, h_{t−1} → h_t
          });
        }
      });
      dh_live.addmm_(dg_t, w_hh);
    } else {
      for_rows(n, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* gr = g + b * 3 * H;
          T* dgr = dg + b * 3 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> one(T(1));
            const Vec<T> grad = load(dhp + b * H + j, c) + load(go + b * H + j, c);
            const Vec<T> z = load(gr + H + j, c);
            const Vec<T> cand = load(gr + 2 * H + j, c);
            const Vec<T> h = load(hp + b * H + j, c);
            store(grad * (one - z) * (one - cand * cand), dgr + 2 * H + j, c);
            store(grad * (h - cand) * z * (one - z), dgr + H + j, c);
            store(grad * z, dhp + b * H + j, c);
          });
        }
      });
      Tensor drh = scratch.narrow(0, 0, n);
      at::mm_out(drh, dg_t.narrow(1, 2 * H, H), w_n);  // ∂/∂(r ⊙ h)
      const T* drp = drh.data_ptr<T>();
      for_rows(n, H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* gr = g + b * 3 * H;
          T* dgr = dg + b * 3 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> one(T(1));
            const Vec<T> d = load(drp + b * H + j, c);
            const Vec<T> r = load(gr + j, c);
            store(d * load(hp + b * H + j, c) * r * (one - r), dgr + j, c);
            store(load(dhp + b * H + j, c) + d * r, dhp + b * H + j, c);
          });
        }
      });
      dh_live.addmm_(dg_t.narrow(1, 0, 2 * H), w_rz);
    }
  }
}

template <typename T>
void lstm_forward_impl(Tensor& gates, Tensor& out, Tensor& cells, const Tensor& h0,
                       const Tensor& c0, const Tensor& w_hh,
                       const std::vector<int64_t>& batch_sizes) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  const Tensor w_t = w_hh.t();
  T* g_all = gates.data_ptr<T>();
  T* out_all = out.data_ptr<T>();
  T* c_all = cells.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = live(batch_sizes, t, B);
    const Tensor h_prev = (t == 0 ? h0 : out.select(0, t - 1)).narrow(0, 0, n);
    const T* cp = (t == 0 ? c0.data_ptr<T>() : c_all + (t - 1) * B * H);
    gates.select(0, t).narrow(0, 0, n).addmm_(h_prev, w_t);
    T* g = g_all + t * B * 4 * H;
    T* o = out_all + t * B * H;
    T* c = c_all + t * B * H;
    for_rows(n, 4 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* gr = g + b * 4 * H;
        for_columns<T>(H, [&](int64_t j, int64_t k) {
          const Vec<T> i = sigmoid(load(gr + j, k));
          const Vec<T> f = sigmoid(load(gr + H + j, k));
          const Vec<T> cand = load(gr + 2 * H + j, k).tanh();
          const Vec<T> og = sigmoid(load(gr + 3 * H + j, k));
          const Vec<T> cell = f * load(cp + b * H + j, k) + i * cand;
          store(i, gr + j, k);
          store(f, gr + H + j, k);
          store(cand, gr + 2 * H + j, k);
          store(og, gr + 3 * H + j, k);
          store(cell, c + b * H + j, k);
          store(og * cell.tanh(), o + b * H + j, k);
        });
      }
    });
  }
}

template <typename T>
void lstm_backward_impl(const Tensor& grad_out, Tensor& dh, Tensor& dc, const Tensor& gates,
                        const Tensor& cells, const Tensor& c0, const Tensor& w_hh,
                        Tensor& dgates, const std::vector<int64_t>& batch_sizes) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = cells.size(2);
  const T* go_all = grad_out.data_ptr<T>();
  const T* g_all = gates.data_ptr<T>();
  const T* c_all = cells.data_ptr<T>();
  T* dg_all = dgates.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dcp = dc.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = live(batch_sizes, t, B);
    const T* go = go_all + t * B * H;
    const T* g = g_all + t * B * 4 * H;
    const T* c = c_all + t * B * H;
    const T* cp = (t == 0 ? c0.data_ptr<T>() : c_all + (t - 1) * B * H);
    T* dg = dg_all + t * B * 4 * H;
    for_rows(n, 4 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* gr = g + b * 4 * H;
        T* dgr = dg + b * 4 * H;
        for_columns<T>(H, [&](int64_t j, int64_t k) {
          const Vec<T> one(T(1));
          const Vec<T> i = load(gr + j, k), f = load(gr + H + j, k);
          const Vec<T> cand = load(gr + 2 * H + j, k), og = load(gr + 3 * H + j, k);
          const Vec<T> grad = load(dhp + b * H + j, k) + load(go + b * H + j, k);
          const Vec<T> tc = load(c + b * H + j, k).tanh();
          const Vec<T> dcell = load(dcp + b * H + j, k) + grad * og * (one - tc * tc);
          store(dcell * cand * i * (one - i), dgr + j, k);
          store(dcell * load(cp + b * H + j, k) * f * (one - f), dgr + H + j, k);
          store(dcell * i * (one - cand * cand), dgr + 2 * H + j, k);
          store(grad * tc * og * (one - og), dgr + 3 * H + j, k);
          store(dcell * f, dcp + b * H + j, k);  // to c_{t−1}
        });
      }
    });
    Tensor dh_live = dh.narrow(0, 0, n);
    at::mm_out(dh_live, dgates.select(0, t).narrow(0, 0, n), w_hh);
  }
}

template <typename T>
void rnn_forward_impl(Tensor& out, const Tensor& h0, const Tensor& w_hh,
                      const std::vector<int64_t>& batch_sizes, bool relu) {
  const int64_t T_ = out.size(0), B = out.size(1);
  const Tensor w_t = w_hh.t();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = live(batch_sizes, t, B);
    const Tensor h_prev = (t == 0 ? h0 : out.select(0, t - 1)).narrow(0, 0, n);
    Tensor o = out.select(0, t).narrow(0, 0, n);
    o.addmm_(h_prev, w_t);
    if (relu) {
      o.relu_();
    } else {
      o.tanh_();
    }
  }
}

template <typename T>
void rnn_backward_impl(const Tensor& grad_out, Tensor& dh, const Tensor& out, const Tensor& w_hh,
                       Tensor& dpre, const std::vector<int64_t>& batch_sizes, bool relu) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const T* go_all = grad_out.data_ptr<T>();
  const T* out_all = out.data_ptr<T>();
  T* dp_all = dpre.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = live(batch_sizes, t, B);
    const T* go = go_all + t * B * H;
    const T* o = out_all + t * B * H;
    T* dp = dp_all + t * B * H;
    for_rows(n, H, [&](int64_t b0, int64_t b1) {
      for_columns<T>((b1 - b0) * H, [&](int64_t j, int64_t k) {
        const int64_t at = b0 * H + j;
        const Vec<T> grad = load(dhp + at, k) + load(go + at, k);
        const Vec<T> h = load(o + at, k);
        const Vec<T> slope = relu ? Vec<T>::blendv(Vec<T>(T(0)), Vec<T>(T(1)), h > Vec<T>(T(0)))
                                  : Vec<T>(T(1)) - h * h;
        store(grad * slope, dp + at, k);
      });
    });
    Tensor dh_live = dh.narrow(0, 0, n);
    at::mm_out(dh_live, dpre.select(0, t).narrow(0, 0, n), w_hh);
  }
}

void gru_forward(Tensor gates, Tensor out, Tensor rec, const Tensor& h0, const Tensor& w_hh,
                 const c10::optional<Tensor>& b_hh, const std::vector<int64_t>& batch_sizes,
                 bool reset_after) {
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_forward", [&] {
    gru_forward_impl<scalar_t>(gates, out, rec, h0, w_hh, b_hh, batch_sizes, reset_after);
  });
}

void gru_backward(const Tensor& grad_out, Tensor dh, const Tensor& gates, const Tensor& rec,
                  const Tensor& out, const Tensor& h0, const Tensor& w_hh, Tensor dgates,
                  const c10::optional<Tensor>& dn_all, const std::vector<int64_t>& batch_sizes,
                  bool reset_after) {
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    gru_backward_impl<scalar_t>(grad_out, dh, gates, rec, out, h0, w_hh, dgates, dn_all,
                                batch_sizes, reset_after);
  });
}

void lstm_forward(Tensor gates, Tensor out, Tensor cells, const Tensor& h0, const Tensor& c0,
                  const Tensor& w_hh, const std::vector<int64_t>& batch_sizes) {
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_forward", [&] {
    lstm_forward_impl<scalar_t>(gates, out, cells, h0, c0, w_hh, batch_sizes);
  });
}

void lstm_backward(const Tensor& grad_out, Tensor dh, Tensor dc, const Tensor& gates,
                   const Tensor& cells, const Tensor& c0, const Tensor& w_hh, Tensor dgates,
                   const std::vector<int64_t>& batch_sizes) {
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    lstm_backward_impl<scalar_t>(grad_out, dh, dc, gates, cells, c0, w_hh, dgates, batch_sizes);
  });
}

void rnn_forward(Tensor out, const Tensor& h0, const Tensor& w_hh,
                 const std::vector<int64_t>& batch_sizes, bool relu) {
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnn_forward", [&] {
    rnn_forward_impl<scalar_t>(out, h0, w_hh, batch_sizes, relu);
  });
}

void rnn_backward(const Tensor& grad_out, Tensor dh, const Tensor& out, const Tensor& w_hh,
                  Tensor dpre, const std::vector<int64_t>& batch_sizes, bool relu) {
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnn_backward", [&] {
    rnn_backward_impl<scalar_t>(grad_out, dh, out, w_hh, dpre, batch_sizes, relu);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward, "GRU forward time loop, in place");
  m.def("gru_backward", &gru_backward, "GRU backward time loop, in place");
  m.def("lstm_forward", &lstm_forward, "LSTM forward time loop, in place");
  m.def("lstm_backward", &lstm_backward, "LSTM backward time loop, in place");
  m.def("rnn_forward", &rnn_forward, "RNN forward time loop, in place");
  m.def("rnn_backward", &rnn_backward, "RNN backward time loop, in place");
}
