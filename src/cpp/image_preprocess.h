// Image preprocessing for the vision tower in C++, for callers without Python (the C API):
// the same steps as the Python package's vision.resize_and_normalize.
#pragma once

#include <cstdint>
#include <vector>

#include "vision.h"

namespace g3e {

// Resizes 8-bit RGB pixels (height rows of width pixels, 3 bytes each, rows stride_bytes apart)
// to size x size with Pillow's bilinear filter, reproducing Pillow 13's fixed-point resampling
// (Resample.c) so the output bytes equal Image.resize(..., Image.BILINEAR, reducing_gap=None).
// Returns size * size * 3 bytes, rows packed. Throws InvalidArgument for an empty image or a
// stride below 3 * width.
std::vector<uint8_t> resize_bilinear_rgb(const uint8_t* rgb, int64_t width, int64_t height, int64_t stride_bytes,
                                         int64_t size);

// Returns the pixel values VisionModel::encode() takes, (3, image_size, image_size) float32:
// the bilinear resize above, rescaled by 1/255 in double and stored as float, then
// (x - image_mean) / image_std in float, as transformers' Gemma 3 image processor.
std::vector<float> preprocess_image(const uint8_t* rgb, int64_t width, int64_t height, int64_t stride_bytes,
                                    const VisionConfig& config);

}  // namespace g3e
