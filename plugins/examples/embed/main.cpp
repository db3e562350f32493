// Embedding DySink engines in a C++ application: the dit_step engine of a bundle, driven from the
// bundle's manifest, replaying the denoising steps that `dysink-run --dump-block N DIR` saved.
//
//   dysink_embed BUNDLE_DIR DUMP_DIR [PLUGIN_LIBRARY]
//
// 1. read BUNDLE_DIR/bundle.json: the dit_step graph's I/O contract (names, shapes, dtypes) and the
//    engine entry written by `dysink-export build` (file, TensorRT version, plugin library);
// 2. load libdysink_plugins.so (the loadLibrary one, not libdysink_plugins_autoreg.so) into the
//    runtime's plugin registry, deserialize the engine, create an execution context (each checked:
//    a failure exits with one line naming the call);
// 3. allocate one device buffer per I/O tensor, bound once by address (the K/V pools stay put);
// 4. for each saved step: upload its inputs (.npy), enqueueV3 on one stream, compare x0 with the
//    saved x0 (tolerance: 1e-3 x max(1, |x0|) for fp32 engines, 3e-2 for fp16 / bf16).
#include "NvInferRuntime.h"

#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace
{
class Logger : public nvinfer1::ILogger
{
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::cerr << "[TensorRT] " << msg << "\n";
        }
    }
};

void cudaCheck(cudaError_t err, char const* what)
{
    if (err != cudaSuccess)
    {
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
    }
}

std::vector<char> readFile(fs::path const& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
    {
        throw std::runtime_error("cannot read " + path.string());
    }
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A .npy file (format 1.0 / 2.0, C order, little-endian): dtype descr, shape, raw bytes.
struct Npy
{
    std::string descr;
    std::vector<int64_t> shape;
    std::vector<char> data;
};

Npy readNpy(fs::path const& path)
{
    std::vector<char> raw = readFile(path);
    if (raw.size() < 10 || std::memcmp(raw.data(), "\x93NUMPY", 6) != 0)
    {
        throw std::runtime_error(path.string() + " is not a .npy file");
    }
    size_t headerLen = 0;
    size_t offset = 0;
    if (raw[6] == 1)
    {
        headerLen = static_cast<uint8_t>(raw[8]) | (static_cast<uint8_t>(raw[9]) << 8);
        offset = 10;
    }
    else
    {
        headerLen = static_cast<uint8_t>(raw[8]) | (static_cast<uint8_t>(raw[9]) << 8)
            | (static_cast<size_t>(static_cast<uint8_t>(raw[10])) << 16)
            | (static_cast<size_t>(static_cast<uint8_t>(raw[11])) << 24);
        offset = 12;
    }
    std::string header(raw.data() + offset, headerLen);
    Npy npy;
    auto field = [&](char const* key) {
        size_t at = header.find(key);
        if (at == std::string::npos)
        {
            throw std::runtime_error(path.string() + ": no " + key + " in the .npy header");
        }
        return at + std::strlen(key);
    };
    size_t d = header.find('\'', field("'descr':")) + 1;
    npy.descr = header.substr(d, header.find('\'', d) - d);
    if (header.find("'fortran_order': True") != std::string::npos)
    {
        throw std::runtime_error(path.string() + " is Fortran-ordered; save it C-contiguous");
    }
    size_t s = header.find('(', field("'shape':")) + 1;
    std::stringstream dims(header.substr(s, header.find(')', s) - s));
    std::string item;
    while (std::getline(dims, item, ','))
    {
        if (item.find_first_not_of(" ") != std::string::npos)
        {
            npy.shape.push_back(std::stoll(item));
        }
    }
    npy.data.assign(raw.begin() + static_cast<std::ptrdiff_t>(offset + headerLen), raw.end());
    return npy;
}

// Contract dtype name -> (.npy descr, bytes per element).
std::pair<std::string, size_t> npyType(std::string const& dtype)
{
    static std::map<std::string, std::pair<std::string, size_t>> const table{{"float32", {"<f4", 4}},
        {"float16", {"<f2", 2}}, {"int64", {"<i8", 8}}, {"int32", {"<i4", 4}},
        {"bool", {"|b1", 1}}};
    auto it = table.find(dtype);
    if (it == table.end())
    {
        throw std::runtime_error("dtype " + dtype + " cannot be replayed from .npy (bfloat16 has no numpy type)");
    }
    return it->second;
}

struct Binding
{
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    size_t bytes = 0;
    void* device = nullptr;
};

size_t elements(std::vector<int64_t> const& shape)
{
    size_t n = 1;
    for (int64_t d : shape)
    {
        n *= static_cast<size_t>(d);
    }
    return n;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 3)
    {
        std::cerr << "usage: " << argv[0] << " BUNDLE_DIR DUMP_DIR [PLUGIN_LIBRARY]\n";
        return 2;
    }
    try
    {
        fs::path bundle(argv[1]);
        fs::path dump(argv[2]);
        json manifest = json::parse(readFile(bundle / "bundle.json"));
        if (!manifest.contains("engines") || !manifest["engines"].contains("dit_step"))
        {
            throw std::runtime_error("bundle has no dit_step engine: dysink-export build --bundle " + bundle.string());
        }
        json const& engineEntry = manifest["engines"]["dit_step"];
        std::string precision = manifest["precision"];
        fs::path plugins = argc > 3 ? fs::path(argv[3])
                                    : fs::path(engineEntry["plugin_library"]["file"].get<std::string>());

        Logger logger;
        std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
        if (!runtime)
        {
            throw std::runtime_error("createInferRuntime failed: TensorRT cannot start here (see its messages above)");
        }
        if (!runtime->getPluginRegistry().loadLibrary(plugins.c_str()))
        {
            throw std::runtime_error("TensorRT could not load the plugin library " + plugins.string());
        }
        std::vector<char> blob = readFile(bundle / engineEntry["file"].get<std::string>());
        std::unique_ptr<nvinfer1::ICudaEngine> engine(runtime->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine)
        {
            throw std::runtime_error("deserializeCudaEngine failed: the engine does not deserialize here (built by "
                "TensorRT " + engineEntry["tensorrt_version"].get<std::string>() + " for "
                + engineEntry["compute_capability"].get<std::string>() + "?)");
        }
        std::unique_ptr<nvinfer1::IExecutionContext> context(engine->createExecutionContext());
        if (!context)
        {
            throw std::runtime_error("createExecutionContext failed: no execution context for the engine (see "
                "TensorRT's messages above; e.g. too little free device memory for its activations)");
        }
        cudaStream_t stream{};
        cudaCheck(cudaStreamCreate(&stream), "cudaStreamCreate");

        // One buffer per I/O tensor of the contract, bound once.
        std::map<std::string, Binding> io;
        json const& graph = manifest["graphs"]["dit_step"];
        for (char const* kind : {"inputs", "outputs"})
        {
            for (json const& t : graph[kind])
            {
                Binding b;
                b.name = t["name"];
                b.dtype = t["dtype"];
                b.shape = t["shape"].get<std::vector<int64_t>>();
                b.bytes = elements(b.shape) * (b.dtype == "bfloat16" ? 2 : npyType(b.dtype).second);
                cudaCheck(cudaMalloc(&b.device, std::max<size_t>(b.bytes, 1)), "cudaMalloc");
                if (!context->setTensorAddress(b.name.c_str(), b.device))
                {
                    throw std::runtime_error("the engine has no tensor " + b.name + ": rebuild it from this bundle");
                }
                io[b.name] = b;
            }
        }
        double const tol = precision == "fp32" ? 1e-3 : 3e-2;
        int failures = 0;
        for (int step = 0; fs::exists(dump / ("step" + std::to_string(step))); ++step)
        {
            fs::path dir = dump / ("step" + std::to_string(step));
            for (json const& t : graph["inputs"])
            {
                Binding const& b = io.at(t["name"]);
                Npy npy = readNpy(dir / (b.name + ".npy"));
                if (npy.descr != npyType(b.dtype).first || npy.data.size() != b.bytes)
                {
                    throw std::runtime_error(dir.string() + "/" + b.name + ".npy does not match the contract ("
                        + b.dtype + ", " + std::to_string(b.bytes) + " bytes)");
                }
                cudaCheck(cudaMemcpyAsync(b.device, npy.data.data(), b.bytes, cudaMemcpyHostToDevice, stream),
                    "upload");
            }
            if (!context->enqueueV3(stream))
            {
                throw std::runtime_error("enqueueV3 failed at step " + std::to_string(step));
            }
            Binding const& x0 = io.at("x0");
            std::vector<float> got(elements(x0.shape));
            cudaCheck(cudaMemcpyAsync(got.data(), x0.device, x0.bytes, cudaMemcpyDeviceToHost, stream), "download");
            cudaCheck(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
            Npy want = readNpy(dir / "x0.npy");
            float const* ref = reinterpret_cast<float const*>(want.data.data());
            double maxErr = 0;
            double maxRef = 1;
            for (size_t i = 0; i < got.size(); ++i)
            {
                maxErr = std::max(maxErr, std::abs(static_cast<double>(got[i]) - ref[i]));
                maxRef = std::max(maxRef, std::abs(static_cast<double>(ref[i])));
            }
            bool ok = maxErr <= tol * maxRef;
            failures += ok ? 0 : 1;
            std::printf("- [%s] step %d: x0 max abs err %.3g (tol %.3g)\n", ok ? "v" : "x", step, maxErr, tol * maxRef);
        }
        for (auto& [name, b] : io)
        {
            cudaFree(b.device);
        }
        cudaStreamDestroy(stream);
        std::printf("%s\n", failures ? "FAILED" : "PASSED");
        return failures ? 1 : 0;
    }
    catch (std::exception const& e)
    {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
}
