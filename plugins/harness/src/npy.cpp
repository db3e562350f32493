#include "npy.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

namespace harness
{

char const* const kNpyDescrs[] = {"<f4", "<f2", "<u2", "<i8", "<i4", "|b1", nullptr};

int64_t NpyArray::count() const
{
    int64_t n = 1;
    for (int64_t d : shape)
    {
        n *= d;
    }
    return n;
}

size_t NpyArray::itemSize() const
{
    for (int i = 0; kNpyDescrs[i]; ++i)
    {
        if (descr == kNpyDescrs[i])
        {
            return static_cast<size_t>(descr[2] - '0');
        }
    }
    return 0;
}

std::string shapeText(std::vector<int64_t> const& shape)
{
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i)
    {
        s += (i ? ", " : "") + std::to_string(shape[i]);
    }
    return s + (shape.size() == 1 ? ",)" : ")");
}

namespace
{
// The text after `'key':` in the header dict, spaces skipped; npos when the key is absent.
size_t valueOf(std::string const& header, char const* key)
{
    size_t at = header.find(std::string("'") + key + "'");
    if (at == std::string::npos)
    {
        return at;
    }
    at = header.find(':', at);
    if (at == std::string::npos)
    {
        return at;
    }
    return header.find_first_not_of(' ', at + 1);
}

bool parseHeader(std::string const& header, NpyArray& out, std::string& error)
{
    size_t d = valueOf(header, "descr");
    size_t f = valueOf(header, "fortran_order");
    size_t s = valueOf(header, "shape");
    if (d == std::string::npos || f == std::string::npos || s == std::string::npos || header[d] != '\''
        || header[s] != '(')
    {
        error = "not a NumPy header (descr, fortran_order, shape): " + header;
        return false;
    }
    size_t dEnd = header.find('\'', d + 1);
    out.descr = header.substr(d + 1, dEnd == std::string::npos ? 0 : dEnd - d - 1);
    if (header.compare(f, 5, "False") != 0)
    {
        error = "Fortran-ordered arrays are not supported: save it C-ordered (np.ascontiguousarray)";
        return false;
    }
    out.shape.clear();
    size_t pos = s + 1;
    size_t close = header.find(')', pos);
    if (close == std::string::npos)
    {
        error = "bad shape in the header: " + header;
        return false;
    }
    while (pos < close)
    {
        size_t next = header.find(',', pos);
        std::string item = header.substr(pos, (next == std::string::npos || next > close ? close : next) - pos);
        if (item.find_first_not_of(' ') != std::string::npos)
        {
            char* end = nullptr;
            long long v = std::strtoll(item.c_str(), &end, 10);
            if (v < 0 || item.find_first_not_of(" 0123456789") != std::string::npos)
            {
                error = "bad shape in the header: " + header;
                return false;
            }
            out.shape.push_back(v);
        }
        pos = (next == std::string::npos || next > close) ? close : next + 1;
    }
    if (!out.itemSize())
    {
        std::string known;
        for (int i = 0; kNpyDescrs[i]; ++i)
        {
            known += std::string(i ? ", " : "") + kNpyDescrs[i];
        }
        error = "dtype '" + out.descr + "' is not supported (little-endian " + known + ")";
        return false;
    }
    return true;
}
} // namespace

bool readNpy(std::string const& path, NpyArray& out, std::string& error)
{
    std::ifstream file(path, std::ios::binary);
    if (!file)
    {
        error = path + ": cannot be opened";
        return false;
    }
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0)
    {
        error = path + ": not a .npy file";
        return false;
    }
    int major = bytes[6];
    size_t headerLen = 0;
    size_t start = 0;
    if (major == 1)
    {
        headerLen = bytes[8] | (bytes[9] << 8);
        start = 10;
    }
    else if ((major == 2 || major == 3) && bytes.size() >= 12)
    {
        headerLen = bytes[8] | (bytes[9] << 8) | (bytes[10] << 16) | (static_cast<size_t>(bytes[11]) << 24);
        start = 12;
    }
    else
    {
        error = path + ": .npy format version " + std::to_string(major) + " is not supported";
        return false;
    }
    if (bytes.size() < start + headerLen)
    {
        error = path + ": truncated header";
        return false;
    }
    std::string header(bytes.begin() + start, bytes.begin() + start + headerLen);
    if (!parseHeader(header, out, error))
    {
        error = path + ": " + error;
        return false;
    }
    size_t want = static_cast<size_t>(out.count()) * out.itemSize();
    size_t have = bytes.size() - start - headerLen;
    if (have != want)
    {
        error = path + ": holds " + std::to_string(have) + " data bytes, its header " + out.descr + " "
            + shapeText(out.shape) + " says " + std::to_string(want);
        return false;
    }
    out.data.assign(bytes.begin() + start + headerLen, bytes.end());
    return true;
}

bool writeNpy(std::string const& path, NpyArray const& array, std::string& error)
{
    if (!array.itemSize() || array.data.size() != static_cast<size_t>(array.count()) * array.itemSize())
    {
        error = path + ": array of dtype '" + array.descr + "' and shape " + shapeText(array.shape)
            + " does not match its " + std::to_string(array.data.size()) + " bytes";
        return false;
    }
    std::string header
        = "{'descr': '" + array.descr + "', 'fortran_order': False, 'shape': " + shapeText(array.shape) + ", }";
    // Magic (6) + version (2) + length (2) + header + '\n', padded with spaces to a multiple of 64.
    size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    if (!file)
    {
        error = path + ": cannot be written";
        return false;
    }
    unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(header.size() & 0xFF),
        static_cast<unsigned char>(header.size() >> 8)};
    file.write(reinterpret_cast<char const*>(prefix), sizeof prefix);
    file.write(header.data(), static_cast<std::streamsize>(header.size()));
    file.write(reinterpret_cast<char const*>(array.data.data()), static_cast<std::streamsize>(array.data.size()));
    if (!file)
    {
        error = path + ": write failed";
        return false;
    }
    return true;
}

} // namespace harness
