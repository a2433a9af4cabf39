#include "worker/model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace moe {
namespace {

// YaRN's mscale (the paper's Eq. 21): 0.1 * mscale * ln(scale) + 1, and 1 where scale <= 1.
double YarnMscale(double scale, double mscale = 1.0) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// The dimension (of `dim`) whose wavelength makes `rotations` turns over `positions`.
double YarnCorrectionDim(double rotations, double dim, double base, double positions) {
  return dim * std::log(positions / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

// transformers' attention_scaling: YaRN's (an explicit attention_factor, else from mscale and
// mscale_all_dim, else from the factor alone); 1 for the other kinds.
double AttentionFactor(const RopeScaling& r) {
  if (r.type != RopeScaling::Type::kYarn) return 1.0;
  if (r.attention_factor) return *r.attention_factor;
  if (r.mscale && r.mscale_all_dim && *r.mscale != 0 && *r.mscale_all_dim != 0) {
    return YarnMscale(r.factor, *r.mscale) / YarnMscale(r.factor, *r.mscale_all_dim);
  }
  return YarnMscale(r.factor);
}

}  // namespace

std::vector<double> RopeInvFreq(int64_t head_dim, double theta) {
  std::vector<double> inv_freq(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    inv_freq[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
  }
  return inv_freq;
}

RopeFrequencies ComputeRopeFrequencies(const ModelConfig& c) {
  const RopeScaling& r = c.rope_scaling;
  const int64_t dim = c.head_dim, half = dim / 2;
  const double base = c.rope_theta;
  RopeFrequencies out;
  out.inv_freq = RopeInvFreq(dim, base);
  out.attention_factor = AttentionFactor(r);
  switch (r.type) {
    case RopeScaling::Type::kDefault:
      break;
    case RopeScaling::Type::kLinear:
      for (double& f : out.inv_freq) f /= r.factor;
      break;
    case RopeScaling::Type::kYarn: {
      const double factor = r.factor;
      // Dimensions below `low` keep their frequency (extrapolation), above `high` take it divided
      // by the factor (interpolation), with a linear ramp between.
      const double positions = static_cast<double>(r.original_max_position_embeddings);
      double low = YarnCorrectionDim(r.beta_fast, static_cast<double>(dim), base, positions);
      double high = YarnCorrectionDim(r.beta_slow, static_cast<double>(dim), base, positions);
      if (r.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;  // (transformers' guard against a zero-width ramp)
      for (int64_t i = 0; i < half; ++i) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrapolation = 1.0 - ramp;
        const double f = out.inv_freq[i];
        out.inv_freq[i] = f / factor * (1.0 - extrapolation) + f * extrapolation;
      }
      break;
    }
    case RopeScaling::Type::kLlama3: {
      // Long wavelengths (beyond the original context / low_freq_factor) are divided by the factor,
      // short ones (below it / high_freq_factor) kept, and those between blended smoothly.
      const double old_context = static_cast<double>(r.original_max_position_embeddings);
      const double low_wavelen = old_context / r.low_freq_factor, high_wavelen = old_context / r.high_freq_factor;
      for (double& f : out.inv_freq) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f /= r.factor;
        } else if (!(wavelen < high_wavelen)) {
          const double smooth = (old_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          f = (1.0 - smooth) * f / r.factor + smooth * f;
        }
      }
      break;
    }
  }
  return out;
}

float AttentionScale(const ModelConfig& c) {
  float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const double af = AttentionFactor(c.rope_scaling);  // (no frequency table: callers run it every step)
  if (af != 1.0) scale = static_cast<float>(scale * af * af);
  return scale;
}

}  // namespace moe
