// Fused CPU kernels for the masked layers' training step (TensorFlow only).
//
// Built on first use by tf_supermask/layers/fused.py (g++ against the installed
// TensorFlow's headers) and used only on a CPU; every other case runs the
// keras.ops code in masks.py (tests compare both against NumPy). Each kernel is
// one single-threaded pass (AVX-512 where the CPU has it): on the 2-core VM
// these ops were measured, handing work to TensorFlow's intra-op threads cost
// more than it saved.
//
// SupermaskTopK: where(the `kept` largest |scores|, kernel, 0) and that boolean
//   mask, exactly: ties at the threshold keep the lower flat positions first,
//   as masks.topk_keep does. The threshold is found on the float bit patterns.
//   Each kernel instance remembers the last threshold and looks for the new one
//   in a narrow band around it (one pass that counts the entries above the
//   band and collects those inside it, then a partial sort of the band); when
//   the band misses, a 16-bit histogram pass and a partial sort of one bucket
//   find it. The remembered value only decides how fast the exact answer is
//   found, never what it is.
// SupermaskTopKGrad: top-k's straight-through gradient to the scores,
//   upstream * kernel * sign(scores) (the derivative of |scores|), in one pass.
// SupermaskBernoulli: where(u < sigmoid(scores), kernel, 0), that mask, and
//   kernel * sigmoid'(scores) for the straight-through gradient (the sigmoid is
//   computed once per step), where u is a uniform in [0, 1) with 24 random bits
//   for each position from a counter-based generator (SplitMix64 of the seed and
//   the position), so the draw depends only on the seed.
// SupermaskMultiply: x * y, for a fixed mask and its gradient, and Bernoulli's
//   gradient to the scores (over x's buffer when nothing else reads it).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_supermask {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;

namespace {

inline uint32_t MagnitudeBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits & 0x7fffffffu;  // the bits of |value|; ordered like the magnitudes
}

// Counts the entries of s[0, n) whose magnitude bits lie above `hi` and stores
// those in [lo, hi] in `inside`, in one read of the scores. Returns false, with
// `inside` incomplete, when more than `capacity` entries lie in the range.
bool CountAndCollect(const float* s, int64_t n, uint32_t lo, uint32_t hi, int64_t capacity,
                     int64_t* above, std::vector<uint32_t>* inside) {
  inside->resize(capacity);
  uint32_t* out = inside->data();
  int64_t count = 0;
  int64_t m = 0;
  const uint32_t span = hi - lo;
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512i v_hi = _mm512_set1_epi32(static_cast<int>(hi));
  const __m512i v_lo = _mm512_set1_epi32(static_cast<int>(lo));
  const __m512i v_span = _mm512_set1_epi32(static_cast<int>(span));
  const __m512i v_abs = _mm512_set1_epi32(0x7fffffff);
  for (; i + 16 <= n; i += 16) {
    const __m512i v = _mm512_and_si512(_mm512_loadu_si512(s + i), v_abs);
    count += __builtin_popcount(_mm512_cmpgt_epu32_mask(v, v_hi));
    const __mmask16 in = _mm512_cmple_epu32_mask(_mm512_sub_epi32(v, v_lo), v_span);
    if (in) {
      const int64_t found = __builtin_popcount(in);
      if (m + found > capacity) return false;
      _mm512_mask_compressstoreu_epi32(out + m, in, v);
      m += found;
    }
  }
#endif
  for (; i < n; ++i) {
    const uint32_t b = MagnitudeBits(s[i]);
    count += b > hi;
    if (b - lo <= span) {  // unsigned: b in [lo, hi]
      if (m == capacity) return false;
      out[m++] = b;
    }
  }
  inside->resize(m);
  *above = count;
  return true;
}

struct Threshold {
  uint32_t bits;      // entries above it are kept
  int64_t ties_kept;  // and this many equal to it, lowest positions first
  int64_t ties_total;
};

// The entries of s in [lo, hi] and how many lie above hi.
struct Range {
  int64_t above = 0;
  std::vector<uint32_t> inside;
};

// The threshold, given a range that holds it (above < kept <= above + inside).
Threshold FromRange(Range* range, int64_t kept) {
  const int64_t needed = kept - range->above;
  std::vector<uint32_t>& values = range->inside;
  auto nth = values.begin() + (needed - 1);
  std::nth_element(values.begin(), nth, values.end(), std::greater<uint32_t>());
  Threshold t;
  t.bits = *nth;
  int64_t greater = 0, equal = 0;
  for (uint32_t b : values) {
    greater += b > t.bits;
    equal += b == t.bits;
  }
  t.ties_kept = needed - greater;
  t.ties_total = equal;
  return t;
}

inline bool Holds(const Range& range, int64_t kept) {
  return range.above < kept && kept <= range.above + static_cast<int64_t>(range.inside.size());
}

}  // namespace

// What SupermaskTopK and SupermaskBernoulli share: scores (input 0) and kernel
// (input 1) of one shape, the masked kernel (output 0) and the boolean mask
// (output 1, empty unless the attribute with_keep asks for it).
class MaskOp : public OpKernel {
 public:
  explicit MaskOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("with_keep", &with_keep_));
  }

 protected:
  struct Buffers {
    const float* scores;
    const float* kernel;
    float* masked;
    bool* keep;  // nullptr without with_keep
    int64_t n;
  };

  // Checks the inputs and allocates outputs 0 and 1; false (with the error set) on failure.
  bool Prepare(OpKernelContext* ctx, Buffers* b) {
    const Tensor& scores = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    if (scores.shape() != kernel.shape()) {
      ctx->CtxFailure(InvalidArgument("scores and kernel differ in shape: ",
                                      scores.shape().DebugString(), " and ",
                                      kernel.shape().DebugString()));
      return false;
    }
    Tensor* masked = nullptr;
    Tensor* keep = nullptr;
    auto status = ctx->allocate_output(0, kernel.shape(), &masked);
    if (status.ok()) {
      status = ctx->allocate_output(1, with_keep_ ? scores.shape() : TensorShape({0}), &keep);
    }
    if (!status.ok()) {
      ctx->CtxFailure(status);
      return false;
    }
    b->scores = scores.flat<float>().data();
    b->kernel = kernel.flat<float>().data();
    b->masked = masked->flat<float>().data();
    b->keep = with_keep_ ? keep->flat<bool>().data() : nullptr;
    b->n = scores.NumElements();
    return true;
  }

 private:
  bool with_keep_ = true;
};

class SupermaskTopKOp : public MaskOp {
 public:
  explicit SupermaskTopKOp(OpKernelConstruction* ctx) : MaskOp(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kept", &kept_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int64_t size = ctx->input(0).NumElements();
    OP_REQUIRES(ctx, kept_ >= 1 && kept_ <= size,
                InvalidArgument("kept must be in [1, ", size, "], got ", kept_));
    Buffers b;
    if (!Prepare(ctx, &b)) return;
    const float* s = b.scores;
    const float* w = b.kernel;
    float* out = b.masked;
    bool* k = b.keep;
    const int64_t n = b.n;

    const Threshold t = Select(s, n);
    if (t.ties_kept == t.ties_total) {  // no tie to break: a plain comparison
      const uint32_t bits = t.bits;
      for (int64_t i = 0; i < n; ++i) out[i] = MagnitudeBits(s[i]) >= bits ? w[i] : 0.0f;
      if (k != nullptr) {
        for (int64_t i = 0; i < n; ++i) k[i] = MagnitudeBits(s[i]) >= bits;
      }
    } else {  // keep the first ties_kept entries equal to the threshold
      int64_t ties_seen = 0;
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t b = MagnitudeBits(s[i]);
        bool on = b > t.bits;
        if (b == t.bits) on = ties_seen++ < t.ties_kept;
        if (k != nullptr) k[i] = on;
        out[i] = on ? w[i] : 0.0f;
      }
    }
  }

 private:
  // The band searched around the last threshold aims to hold about this many
  // entries; the partial sort of a band costs about 10 ns an entry.
  static constexpr int64_t kBandTarget = 256;
  static constexpr int kShift = 15;  // histogram buckets: the top 16 magnitude bits

  Threshold Select(const float* s, int64_t n) {
    const uint32_t last = hint_.load(std::memory_order_relaxed);
    const uint32_t width = width_.load(std::memory_order_relaxed);
    if (width != 0) {
      const uint32_t lo = last > width ? last - width : 0;
      const uint32_t hi = last < 0x7fffffffu - width ? last + width : 0x7fffffffu;
      Range band;
      if (CountAndCollect(s, n, lo, hi, 64 * kBandTarget, &band.above, &band.inside) &&
          Holds(band, kept_)) {
        const int64_t found = static_cast<int64_t>(band.inside.size());
        const Threshold t = FromRange(&band, kept_);
        uint64_t next = width;
        if (found > 2 * kBandTarget) next = width / 2;
        if (found < kBandTarget / 4) next = 2ull * width;
        Remember(t.bits, next);
        return t;
      }
      // Missed: the histogram below finds the threshold; search wider next time.
      const Threshold t = FromHistogram(s, n);
      Remember(t.bits, 4ull * width);
      return t;
    }
    return FromHistogram(s, n);
  }

  Threshold FromHistogram(const float* s, int64_t n) {
    constexpr int kBuckets = 1 << 16;
    std::vector<int64_t> counts(kBuckets, 0);
    for (int64_t i = 0; i < n; ++i) ++counts[MagnitudeBits(s[i]) >> kShift];
    int chosen = kBuckets - 1;
    int64_t above = 0;
    while (above + counts[chosen] < kept_) above += counts[chosen--];
    const uint32_t lo = static_cast<uint32_t>(chosen) << kShift;
    Range bucket;
    CountAndCollect(s, n, lo, lo + ((1u << kShift) - 1), counts[chosen], &bucket.above,
                    &bucket.inside);  // has room for the whole bucket
    const Threshold t = FromRange(&bucket, kept_);
    if (width_.load(std::memory_order_relaxed) == 0) {
      // First band: the share of the bucket's width that holds about kBandTarget entries.
      const double share = static_cast<double>(kBandTarget) / std::max<int64_t>(counts[chosen], 1);
      Remember(t.bits, static_cast<uint64_t>(share * (1u << kShift)));
    }
    return t;
  }

  void Remember(uint32_t threshold, uint64_t width) {
    hint_.store(threshold, std::memory_order_relaxed);
    width_.store(static_cast<uint32_t>(std::clamp<uint64_t>(width, 1, 1ull << 30)),
                 std::memory_order_relaxed);
  }

  tensorflow::int64 kept_ = 0;
  // What the last call found, for a kernel instance called again (each step of a
  // traced training function): only a starting point, checked by every call.
  std::atomic<uint32_t> hint_{0};
  std::atomic<uint32_t> width_{0};  // 0: nothing remembered yet
};

namespace {

inline uint64_t SplitMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

// Uniforms in [0, 1) for positions [start, start + len), start even: position i
// takes 24 bits of SplitMix64(key + golden * (i / 2 + 1)), the high 24 for an
// even i and the low 24 for an odd one.
inline void UniformsInto(uint64_t key, int64_t start, int64_t len, float* u) {
  const uint64_t first = static_cast<uint64_t>(start / 2) + 1;
  for (int64_t j = 0; j < len / 2; ++j) {
    const uint64_t draw = SplitMix64(key + kGolden * (first + j));
    u[2 * j] = static_cast<float>(draw >> 40) * 0x1.0p-24f;
    u[2 * j + 1] = static_cast<float>(draw & 0xffffffull) * 0x1.0p-24f;
  }
  if (len % 2) u[len - 1] = static_cast<float>(SplitMix64(key + kGolden * (first + len / 2)) >> 40) *
                            0x1.0p-24f;
}
constexpr int64_t kChunk = 2048;  // entries whose sigmoid is computed at once

// sigmoid(s[start, start + len)) into p, with Eigen's vectorised logistic function.
inline void SigmoidInto(const float* s, int64_t len, float* p) {
  Eigen::TensorMap<Eigen::Tensor<const float, 1>> in(s, len);
  Eigen::TensorMap<Eigen::Tensor<float, 1>> result(p, len);
  result = in.sigmoid();
}

}  // namespace

class SupermaskBernoulliOp : public MaskOp {
 public:
  explicit SupermaskBernoulliOp(OpKernelConstruction* ctx) : MaskOp(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& seed = ctx->input(2);
    OP_REQUIRES(ctx, seed.NumElements() == 2,
                InvalidArgument("seed must hold 2 integers, got ", seed.NumElements()));
    const auto seed_values = seed.flat<tensorflow::int64>();
    const uint64_t key = SplitMix64((static_cast<uint64_t>(seed_values(0)) << 32) ^
                                    static_cast<uint64_t>(seed_values(1) & 0xffffffffll));
    Buffers b;
    if (!Prepare(ctx, &b)) return;
    Tensor* slope = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(0).shape(), &slope));
    const float* s = b.scores;
    const float* w = b.kernel;
    float* out = b.masked;
    float* ds = slope->flat<float>().data();
    bool* k = b.keep;
    const int64_t n = b.n;
    float p[kChunk], u[kChunk];  // kChunk is even, so every chunk starts at an even position
    for (int64_t c = 0; c < n; c += kChunk) {
      const int64_t len = std::min(kChunk, n - c);
      SigmoidInto(s + c, len, p);
      UniformsInto(key, c, len, u);
      for (int64_t j = 0; j < len; ++j) {
        out[c + j] = u[j] < p[j] ? w[c + j] : 0.0f;
        ds[c + j] = w[c + j] * (p[j] * (1.0f - p[j]));
      }
      if (k != nullptr) {
        for (int64_t j = 0; j < len; ++j) k[c + j] = u[j] < p[j];
      }
    }
  }
};

class SupermaskTopKGradOp : public OpKernel {
 public:
  explicit SupermaskTopKGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& upstream = ctx->input(0);
    const Tensor& kernel = ctx->input(1);
    const Tensor& scores = ctx->input(2);
    OP_REQUIRES(ctx, upstream.shape() == kernel.shape() && scores.shape() == kernel.shape(),
                InvalidArgument("upstream, kernel and scores must share one shape"));
    Tensor* d_scores = nullptr;  // written over the upstream gradient when nothing else reads it
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, scores.shape(), &d_scores));
    const float* g = upstream.flat<float>().data();
    const float* w = kernel.flat<float>().data();
    const float* s = scores.flat<float>().data();
    float* d = d_scores->flat<float>().data();
    const int64_t n = scores.NumElements();
    for (int64_t i = 0; i < n; ++i) {
      const float sign = static_cast<float>((s[i] > 0.0f) - (s[i] < 0.0f));
      d[i] = g[i] * w[i] * sign;
    }
  }
};

class SupermaskMultiplyOp : public OpKernel {
 public:
  explicit SupermaskMultiplyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& mask = ctx->input(1);
    OP_REQUIRES(ctx, x.shape() == mask.shape(),
                InvalidArgument("x and mask differ in shape: ", x.shape().DebugString(), " and ",
                                mask.shape().DebugString()));
    Tensor* product = nullptr;  // written over x when nothing else reads it
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &product));
    const float* a = x.flat<float>().data();
    const float* m = mask.flat<float>().data();
    float* out = product->flat<float>().data();
    const int64_t n = x.NumElements();
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] * m[i];
  }
};

REGISTER_OP("SupermaskMultiply")
    .Input("x: float")
    .Input("mask: float")
    .Output("product: float")
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape);

REGISTER_KERNEL_BUILDER(Name("SupermaskMultiply").Device(DEVICE_CPU), SupermaskMultiplyOp);

// Shapes of the mask ops: masked kernel like the kernel (input 1), `keep` like the
// scores (input 0) or empty without with_keep, then any further outputs like the scores.
tensorflow::Status MaskShapes(tensorflow::shape_inference::InferenceContext* c) {
  bool with_keep = true;
  TF_RETURN_IF_ERROR(c->GetAttr("with_keep", &with_keep));
  c->set_output(0, c->input(1));
  c->set_output(1, with_keep ? c->input(0) : c->Vector(0));
  for (int i = 2; i < c->num_outputs(); ++i) c->set_output(i, c->input(0));
  return tensorflow::OkStatus();
}

REGISTER_OP("SupermaskTopK")
    .Input("scores: float")
    .Input("kernel: float")
    .Output("masked: float")
    .Output("keep: bool")
    .Attr("kept: int")
    .Attr("with_keep: bool = true")  // false: `keep` is empty (no kernel gradient needed)
    .SetShapeFn(MaskShapes);

REGISTER_OP("SupermaskBernoulli")
    .Input("scores: float")
    .Input("kernel: float")
    .Input("seed: int64")
    .Output("masked: float")
    .Output("keep: bool")
    .Output("slope: float")  // kernel * sigmoid'(scores): d masked / d scores, straight through
    .Attr("with_keep: bool = true")
    .SetShapeFn(MaskShapes);

REGISTER_OP("SupermaskTopKGrad")
    .Input("upstream: float")
    .Input("kernel: float")
    .Input("scores: float")
    .Output("d_scores: float")
    .SetShapeFn(tensorflow::shape_inference::UnchangedShape);  // all inputs share one shape

REGISTER_KERNEL_BUILDER(Name("SupermaskTopK").Device(DEVICE_CPU), SupermaskTopKOp);
REGISTER_KERNEL_BUILDER(Name("SupermaskBernoulli").Device(DEVICE_CPU), SupermaskBernoulliOp);
REGISTER_KERNEL_BUILDER(Name("SupermaskTopKGrad").Device(DEVICE_CPU), SupermaskTopKGradOp);

}  // namespace tf_supermask
