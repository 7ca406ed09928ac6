// Pillow-compatible bilinear resize and Gemma 3's pixel normalisation. The resize follows
// Pillow 13's libImaging/Resample.c: a separable convolution whose triangle filter widens with
// the downscale factor, with fixed-point weights of 22 fraction bits and rounding to 8 bits
// after each pass. tests/test_c_api.py compares its output bytes with Pillow's. Contraction is
// off because a fused multiply-add in the weight rounding (k * 2^22 + 0.5) could round a weight
// differently from Pillow's separate multiply and add.
#include "fp_contract_off.h"

#include "image_preprocess.h"

#include <cmath>
#include <string>

#include "errors.h"

namespace g3e {

namespace {

// Fraction bits of Pillow's 8-bit resampling weights: 32 - 8 (pixel) - 2 (headroom).
constexpr int kPrecisionBits = 32 - 8 - 2;

// Source window and fixed-point weights of every output pixel along one axis.
struct AxisWeights {
  int64_t taps = 0;              // weights per output pixel (ksize)
  std::vector<int64_t> first;    // first source index (xmin)
  std::vector<int64_t> count;    // source pixels used (xmax - xmin)
  std::vector<int32_t> weights;  // (out_size, taps)
};

double triangle(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Pillow's precompute_coeffs() for the bilinear filter (support 1) over the whole source
// axis, followed by normalize_coeffs_8bpc().
AxisWeights axis_weights(int64_t in_size, int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filter_scale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filter_scale;
  AxisWeights a;
  a.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  a.first.resize(out_size);
  a.count.resize(out_size);
  a.weights.assign(static_cast<size_t>(out_size * a.taps), 0);
  std::vector<double> k(static_cast<size_t>(a.taps));
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (static_cast<double>(xx) + 0.5) * scale;
    const double inverse = 1.0 / filter_scale;
    int64_t xmin = static_cast<int64_t>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int64_t xmax = static_cast<int64_t>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double total = 0.0;
    for (int64_t x = 0; x < xmax; ++x) {
      k[x] = triangle((static_cast<double>(x + xmin) - center + 0.5) * inverse);
      total += k[x];
    }
    for (int64_t x = 0; x < xmax; ++x) {
      if (total != 0.0) k[x] /= total;
      const double fixed = k[x] * static_cast<double>(1 << kPrecisionBits);
      a.weights[xx * a.taps + x] = static_cast<int32_t>(k[x] < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    a.first[xx] = xmin;
    a.count[xx] = xmax;
  }
  return a;
}

uint8_t clip8(int32_t value) {
  if (value >= (1 << kPrecisionBits << 8)) return 255;
  if (value <= 0) return 0;
  return static_cast<uint8_t>(value >> kPrecisionBits);
}

// One pass over the lines (rows for the horizontal pass, columns for the vertical one) of a
// 3-channel image. Line i starts at src + i * line_offset, its pixels are step bytes apart, and
// output pixel o of line i goes to dst + i * dst_line + o * dst_pixel.
void resample_pass(const AxisWeights& a, const uint8_t* src, int64_t lines, int64_t line_offset, int64_t step,
                   int64_t out_size, uint8_t* dst, int64_t dst_line, int64_t dst_pixel) {
  for (int64_t line = 0; line < lines; ++line) {
    const uint8_t* in = src + line * line_offset;
    for (int64_t o = 0; o < out_size; ++o) {
      const int32_t* k = &a.weights[o * a.taps];
      for (int c = 0; c < 3; ++c) {
        int32_t sum = 1 << (kPrecisionBits - 1);
        for (int64_t x = 0; x < a.count[o]; ++x) sum += in[(a.first[o] + x) * step + c] * k[x];
        dst[line * dst_line + o * dst_pixel + c] = clip8(sum);
      }
    }
  }
}

}  // namespace

std::vector<uint8_t> resize_bilinear_rgb(const uint8_t* rgb, int64_t width, int64_t height, int64_t stride_bytes,
                                         int64_t size) {
  if (width < 1 || height < 1) {
    throw InvalidArgument("image size " + std::to_string(width) + "x" + std::to_string(height) +
                          " is invalid; width and height must be >= 1");
  }
  if (stride_bytes < 3 * width) {
    throw InvalidArgument("stride_bytes " + std::to_string(stride_bytes) + " is less than 3 * width = " +
                          std::to_string(3 * width));
  }
  // Pillow skips the pass of an axis whose size does not change, so an image that already has
  // the target size comes back unchanged.
  std::vector<uint8_t> rows;  // (height, size, 3) after the horizontal pass
  const uint8_t* src = rgb;
  int64_t src_stride = stride_bytes;
  if (width != size) {
    const AxisWeights horizontal = axis_weights(width, size);
    rows.resize(static_cast<size_t>(height * size * 3));
    resample_pass(horizontal, rgb, height, stride_bytes, 3, size, rows.data(), size * 3, 3);
    src = rows.data();
    src_stride = size * 3;
  }
  std::vector<uint8_t> out(static_cast<size_t>(size * size * 3));
  if (height != size) {
    // Columns are the lines of this pass: source pixels along a column are src_stride apart.
    const AxisWeights vertical = axis_weights(height, size);
    resample_pass(vertical, src, size, 3, src_stride, size, out.data(), 3, size * 3);
  } else {
    for (int64_t y = 0; y < size; ++y) {
      for (int64_t i = 0; i < size * 3; ++i) out[y * size * 3 + i] = src[y * src_stride + i];
    }
  }
  return out;
}

std::vector<float> preprocess_image(const uint8_t* rgb, int64_t width, int64_t height, int64_t stride_bytes,
                                    const VisionConfig& config) {
  const int64_t size = config.image_size;
  const std::vector<uint8_t> resized = resize_bilinear_rgb(rgb, width, height, stride_bytes, size);
  constexpr double kRescale = 1.0 / 255.0;
  std::vector<float> pixels(static_cast<size_t>(3 * size * size));
  for (int64_t y = 0; y < size; ++y) {
    for (int64_t x = 0; x < size; ++x) {
      for (int64_t c = 0; c < 3; ++c) {
        const float rescaled = static_cast<float>(static_cast<double>(resized[(y * size + x) * 3 + c]) * kRescale);
        pixels[(c * size + y) * size + x] = (rescaled - config.image_mean[c]) / config.image_std[c];
      }
    }
  }
  return pixels;
}

}  // namespace g3e
