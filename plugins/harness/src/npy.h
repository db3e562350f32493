// .npy files (NumPy format 1.0 / 2.0 / 3.0), C order, little endian: float32 '<f4', float16 '<f2',
// bfloat16 as its raw bits '<u2' (NumPy has no bfloat16; the case file names the dtype), int64 '<i8',
// int32 '<i4', bool '|b1'. Anything else is refused with one line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace harness
{

struct NpyArray
{
    std::string descr;            // e.g. "<f4"
    std::vector<int64_t> shape;   // () for a scalar
    std::vector<uint8_t> data;    // count() * itemSize() bytes, C order

    int64_t count() const;
    size_t itemSize() const;      // from descr; 0 when descr is not one of the supported ones
};

// The descriptors above; nullptr-terminated.
extern char const* const kNpyDescrs[];

bool readNpy(std::string const& path, NpyArray& out, std::string& error);
bool writeNpy(std::string const& path, NpyArray const& array, std::string& error);

// "(2, 3)" style text of a shape, for messages.
std::string shapeText(std::vector<int64_t> const& shape);

} // namespace harness
