// Embedding masked-rnn in C++17 through its C ABI (include/masked_rnn.h): RAII handles (std::unique_ptr
// with the library's _free function as deleter), failures as exceptions carrying mrnn_status_string and
// mrnn_last_error, and an ONNX LSTM node and an ONNX GRU node run on a padded batch with sequence lengths.
//
// It checks what an embedder relies on, and exits non-zero if anything differs:
// - a handle's outputs equal the one-shot function's (mrnn_lstm_onnx / mrnn_gru_onnx) bit for bit;
// - Y is +0.0 at the padded steps, Y_h is Y at each sequence's last valid step (zeros for a length-0 one);
// - one const handle run from four std::threads at once gives bitwise the single-threaded outputs;
// - a refused call throws mrnn::Error with the status and the library's message.
//
// Build: g++ -std=c++17 embed.cpp $(pkg-config --cflags --libs masked-rnn) -o embed   (see README.md)
#include <masked_rnn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace mrnn {

// A failed call: its status code, and a message naming the function, the status and the library's
// explanation (mrnn_last_error, read at once: it is per thread and replaced by the next failure).
class Error : public std::runtime_error {
 public:
  Error(const char *function, int32_t status)
      : std::runtime_error(std::string(function) + ": " + mrnn_status_string(status) + ": " + mrnn_last_error()),
        status_(status) {}
  int32_t status() const noexcept { return status_; }

 private:
  int32_t status_;
};

inline void check(const char *function, int32_t status) {
  if (status != MRNN_OK) throw Error(function, status);
}

// std::unique_ptr deleter calling the library's _free function (which accepts NULL).
template <typename T, void (*Free)(T *)>
struct Deleter {
  void operator()(T *p) const noexcept { Free(p); }
};

// Outputs of one run: Y [T,D,B,H], Y_h [D,B,H] (layout 0; D = 1 here), and for the LSTM Y_c.
struct Outputs {
  std::vector<float> y, y_h, y_c;
};

// An ONNX LSTM node with its weights packed once. run() is const: it only reads the handle, so one node
// may be run from several threads at once (see the header's "Handles").
class OnnxLstm {
 public:
  OnnxLstm(const MrnnOnnxLstmAttrs &attrs, const std::vector<float> &w, const std::vector<float> &r,
           const std::vector<float> &b)
      : attrs_(attrs) {
    MrnnOnnxLstm *made = nullptr;
    check("mrnn_onnx_lstm_new", mrnn_onnx_lstm_new(&attrs, w.data(), r.data(), b.data(), nullptr, &made));
    handle_.reset(made);
  }

  Outputs run(const std::vector<float> &x, const std::vector<int32_t> &lens, int32_t threads,
              int64_t hidden_size = 0) const {
    MrnnOnnxLstmAttrs a = attrs_;
    a.batch_size = static_cast<int64_t>(lens.size());
    a.num_threads = threads;
    if (hidden_size != 0) a.hidden_size = hidden_size;  // only to show a refused call
    const std::size_t state = static_cast<std::size_t>(a.batch_size * attrs_.hidden_size);
    Outputs o{std::vector<float>(static_cast<std::size_t>(a.seq_length) * state), std::vector<float>(state),
              std::vector<float>(state)};
    check("mrnn_onnx_lstm_run", mrnn_onnx_lstm_run(handle_.get(), &a, x.data(), lens.data(), nullptr, nullptr,
                                                   o.y.data(), o.y_h.data(), o.y_c.data()));
    return o;
  }

 private:
  MrnnOnnxLstmAttrs attrs_;
  std::unique_ptr<MrnnOnnxLstm, Deleter<MrnnOnnxLstm, mrnn_onnx_lstm_free>> handle_;
};

// An ONNX GRU node, as OnnxLstm.
class OnnxGru {
 public:
  OnnxGru(const MrnnOnnxGruAttrs &attrs, const std::vector<float> &w, const std::vector<float> &r,
          const std::vector<float> &b)
      : attrs_(attrs) {
    MrnnOnnxGru *made = nullptr;
    check("mrnn_onnx_gru_new", mrnn_onnx_gru_new(&attrs, w.data(), r.data(), b.data(), &made));
    handle_.reset(made);
  }

  Outputs run(const std::vector<float> &x, const std::vector<int32_t> &lens, int32_t threads) const {
    MrnnOnnxGruAttrs a = attrs_;
    a.batch_size = static_cast<int64_t>(lens.size());
    a.num_threads = threads;
    const std::size_t state = static_cast<std::size_t>(a.batch_size * attrs_.hidden_size);
    Outputs o{std::vector<float>(static_cast<std::size_t>(a.seq_length) * state), std::vector<float>(state), {}};
    check("mrnn_onnx_gru_run",
          mrnn_onnx_gru_run(handle_.get(), &a, x.data(), lens.data(), nullptr, o.y.data(), o.y_h.data()));
    return o;
  }

 private:
  MrnnOnnxGruAttrs attrs_;
  std::unique_ptr<MrnnOnnxGru, Deleter<MrnnOnnxGru, mrnn_onnx_gru_free>> handle_;
};

}  // namespace mrnn

namespace {

int failures = 0;

void expect(bool ok, const std::string &what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++failures;
  }
}

bool same_bits(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool same_outputs(const mrnn::Outputs &a, const mrnn::Outputs &b) {
  return same_bits(a.y, b.y) && same_bits(a.y_h, b.y_h) && same_bits(a.y_c, b.y_c);
}

// Attributes filled by `init` (the library's defaults), with the sizes fixed at creation.
template <typename Attrs>
Attrs sized(int32_t (*init)(Attrs *), std::size_t T, std::size_t I, std::size_t H) {
  Attrs a;
  mrnn::check("attrs_init", init(&a));
  a.seq_length = static_cast<int64_t>(T);
  a.input_size = static_cast<int64_t>(I);
  a.hidden_size = static_cast<int64_t>(H);
  return a;
}

bool is_positive_zero(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u == 0;
}

// Deterministic values in [-scale, scale].
std::vector<float> values(std::size_t n, std::uint32_t seed, float scale) {
  std::vector<float> v(n);
  for (float &f : v) {
    seed = seed * 1664525u + 1013904223u;
    f = (static_cast<float>(seed >> 8) / 16777216.0f * 2.0f - 1.0f) * scale;
  }
  return v;
}

// Y is +0.0 past each length; Y_h is Y at the last valid step, zeros for a length-0 sequence.
void check_padding(const char *name, const mrnn::Outputs &o, const std::vector<int32_t> &lens, std::size_t T,
                   std::size_t H) {
  const std::size_t B = lens.size();
  for (std::size_t b = 0; b < B; ++b) {
    const std::size_t len = static_cast<std::size_t>(lens[b]);
    bool padded_zero = true, last_ok = true;
    for (std::size_t t = len; t < T; ++t)
      for (std::size_t j = 0; j < H; ++j) padded_zero &= is_positive_zero(o.y[(t * B + b) * H + j]);
    for (std::size_t j = 0; j < H; ++j) {
      const float last = len == 0 ? 0.0f : o.y[((len - 1) * B + b) * H + j];
      last_ok &= std::memcmp(&last, &o.y_h[b * H + j], sizeof(float)) == 0;
    }
    expect(padded_zero, std::string(name) + ": Y is not +0.0 past the length of sequence " + std::to_string(b));
    expect(last_ok, std::string(name) + ": Y_h is not Y at the last valid step of sequence " + std::to_string(b));
  }
}

}  // namespace

int main() {
  const std::size_t T = 6, I = 4, H = 7;
  const std::vector<int32_t> lens = {6, 2, 0, 5};  // a padded batch: B = 4, one empty sequence
  const std::size_t B = lens.size();
  const std::vector<float> x = values(T * B * I, 1, 1.5f);  // [T,B,I], layout 0
  try {
    // ---- LSTM: weights W [1,4H,I], R [1,4H,H], B [1,8H]
    const MrnnOnnxLstmAttrs la = sized(mrnn_onnx_lstm_attrs_init, T, I, H);
    const std::vector<float> lw = values(4 * H * I, 2, 0.5f), lr = values(4 * H * H, 3, 0.5f),
                             lb = values(8 * H, 4, 0.3f);
    const mrnn::OnnxLstm lstm(la, lw, lr, lb);
    const mrnn::Outputs run = lstm.run(x, lens, 1);

    MrnnOnnxLstmAttrs once = la;
    once.batch_size = static_cast<int64_t>(B);
    once.num_threads = 1;
    mrnn::Outputs ref{std::vector<float>(T * B * H), std::vector<float>(B * H), std::vector<float>(B * H)};
    mrnn::check("mrnn_lstm_onnx", mrnn_lstm_onnx(&once, x.data(), lw.data(), lr.data(), lb.data(), lens.data(),
                                                 nullptr, nullptr, nullptr, ref.y.data(), ref.y_h.data(),
                                                 ref.y_c.data()));
    expect(same_outputs(run, ref), "LSTM: the handle's outputs differ from mrnn_lstm_onnx's");
    check_padding("LSTM", run, lens, T, H);

    // One const handle, four threads at once (each computing on 1 or 2 threads of the library).
    std::vector<mrnn::Outputs> got(4);
    std::vector<std::thread> threads;
    for (std::size_t k = 0; k < got.size(); ++k)
      threads.emplace_back([&, k] { got[k] = lstm.run(x, lens, static_cast<int32_t>(1 + k % 2)); });
    for (std::thread &t : threads) t.join();
    for (const mrnn::Outputs &o : got)
      expect(same_outputs(o, run), "LSTM: a concurrent run differs from the single-threaded one");

    // ---- GRU: W [1,3H,I], R [1,3H,H], B [1,6H]
    MrnnOnnxGruAttrs ga = sized(mrnn_onnx_gru_attrs_init, T, I, H);
    ga.linear_before_reset = 1;
    const std::vector<float> gw = values(3 * H * I, 5, 0.5f), gr = values(3 * H * H, 6, 0.5f),
                             gb = values(6 * H, 7, 0.3f);
    const mrnn::OnnxGru gru(ga, gw, gr, gb);
    const mrnn::Outputs grun = gru.run(x, lens, 0);

    MrnnOnnxGruAttrs gonce = ga;
    gonce.batch_size = static_cast<int64_t>(B);
    mrnn::Outputs gref{std::vector<float>(T * B * H), std::vector<float>(B * H), {}};
    mrnn::check("mrnn_gru_onnx", mrnn_gru_onnx(&gonce, x.data(), gw.data(), gr.data(), gb.data(), lens.data(),
                                               nullptr, gref.y.data(), gref.y_h.data()));
    expect(same_outputs(grun, gref), "GRU: the handle's outputs differ from mrnn_gru_onnx's");
    check_padding("GRU", grun, lens, T, H);

    // ---- A refused call: a run whose hidden_size differs from the handle's.
    try {
      (void)lstm.run(x, lens, 1, static_cast<int64_t>(H + 1));
      expect(false, "a run with another hidden_size was not refused");
    } catch (const mrnn::Error &e) {
      const std::string message = e.what();
      expect(e.status() == MRNN_ERR_BAD_ARGUMENT, "refused with status " + std::to_string(e.status()));
      expect(message.find("MRNN_ERR_BAD_ARGUMENT") != std::string::npos &&
                 message.find("hidden_size") != std::string::npos,
             "the exception's message: " + message);
      std::printf("refused as expected: %s\n", message.c_str());
    }
  } catch (const std::exception &e) {
    std::fprintf(stderr, "FAIL: %s\n", e.what());
    return 1;
  }
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("masked-rnn %s from C++: LSTM and GRU handles equal the one-shot functions bit for bit, padded "
              "steps +0.0, 4 concurrent runs agree\n",
              mrnn_version());
  return 0;
}
