// Host-side checks of dysink::GatedSinkAttentionQ8 in libdysink_plugins.so, without TensorRT or a GPU:
// the creator and its attributes, output types and shapes, every format combination the ONNX
// contract allows and some it does not, the shape checks, serialization, and, against the CUDA
// driver TEST DOUBLE (driver_double.cpp as libcuda.so.1: two fake devices, sm_87 and sm_90), which
// kernel variant onShapeChange picks for the pools' type (int8 / fp8 / bf16 pages, or the model
// dtype's for GatedSinkAttention) and every argument enqueue launches each kernel with, the scale
// pointers included. Driven by tests/plugins/test_plugin_q8.py, whose library embeds kernels whose
// symbols were renamed "<kernel>|<pages>|<arch>" (the double records the name; no kernel runs):
//
//   LD_LIBRARY_PATH=<standin-cuda> q8_harness LIB THRESHOLD SINK_KV_BF16 FIXED_SINKS
//
// prints one line per check ("ok ..." / "FAIL ...") and exits non-zero if any failed.
#include "harness_common.h"

#include <dlfcn.h>

#include <cmath>
#include <cstdint>

using namespace nvinfer1;
using namespace harness;

namespace
{
int64_t const L = 37, H = 2, D = 32, P = 6, SL = 4;   // the tiny model's heads and head dim

// --- launches, as the driver double reports them --------------------------------------------
using LaunchHook = void (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, void**);
char const* (*gFunctionName)(void*) = nullptr;

struct Launch
{
    std::string symbol;
    unsigned grid[3];
    std::vector<std::string> args;   // "p0x..." pointer, "i..." int32, "f..." float32, in launch order
};
std::vector<Launch> gLaunches;

// The kinds of the arguments the plugin passes a kernel (by its symbol "<kernel>|<pages>|<arch>"),
// then Triton's two scratch pointers.
std::string argKinds(std::string const& symbol)
{
    std::string const kernel = symbol.substr(0, symbol.find('|'));
    bool const scaled = symbol.find("|int8|") != std::string::npos || symbol.find("|fp8|") != std::string::npos;
    std::string kinds = kernel == "gate_partial_sums" ? std::string("ppppppiiiiiii") + (scaled ? "p" : "")
        : kernel == "gate_decide"                    ? std::string("ppppiiiii")
        : kernel == "paged_attention"                ? std::string("pppppppppffiiiiii") + (scaled ? "pp" : "")
                                                     : std::string();
    return kinds + "pp";
}

std::string ptr(uint64_t v)
{
    char text[32];
    std::snprintf(text, sizeof text, "p0x%llx", static_cast<unsigned long long>(v));
    return text;
}
std::string i32(int64_t v)
{
    return "i" + std::to_string(v);
}
std::string f32(float v)
{
    char text[32];
    std::snprintf(text, sizeof text, "f%.9g", static_cast<double>(v));
    return text;
}

void onLaunch(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned, unsigned, void** params)
{
    Launch launch{gFunctionName(function), {gx, gy, gz}, {}};
    std::string const kinds = argKinds(launch.symbol);
    for (size_t i = 0; i < kinds.size(); ++i)
    {
        if (kinds[i] == 'p')
        {
            uint64_t v = 0;
            std::memcpy(&v, params[i], sizeof v);
            launch.args.push_back(ptr(v));
        }
        else if (kinds[i] == 'i')
        {
            int32_t v = 0;
            std::memcpy(&v, params[i], sizeof v);
            launch.args.push_back(i32(v));
        }
        else
        {
            float v = 0;
            std::memcpy(&v, params[i], sizeof v);
            launch.args.push_back(f32(v));
        }
    }
    gLaunches.push_back(launch);
}

std::string joined(std::vector<std::string> const& items)
{
    std::string text;
    for (auto const& item : items)
    {
        text += (text.empty() ? "" : " ") + item;
    }
    return text;
}

// Buffers handed to enqueue: fake device addresses the double never reads.
uint64_t inputAddress(int i)
{
    return 0x10000ULL * static_cast<uint64_t>(i + 1);
}
uint64_t const kOut = 0xA00000, kRatios = 0xB00000, kWorkspace = 0xC00000;

std::vector<DynamicPluginTensorDesc> q8Descs(DataType q, DataType pool, int64_t ss, int nInputs = 9)
{
    std::vector<DynamicPluginTensorDesc> io{desc({L, H, D}, q), desc({L, H, D}, q), desc({L, H, D}, q),
        desc({P, L, H, D}, pool), desc({P, L, H, D}, pool), desc({SL}, DataType::kINT64), desc({ss}, DataType::kINT64)};
    if (nInputs == 9)
    {
        io.push_back(desc({P, L, H}, DataType::kFLOAT));
        io.push_back(desc({P, L, H}, DataType::kFLOAT));
    }
    io.push_back(desc({L, H, D}, q));
    io.push_back(desc({ss}, DataType::kFLOAT));
    return io;
}

struct Run
{
    int32_t shapeRc = -1;
    int32_t enqueueRc = -1;
    std::string said;   // what the plugin logged meanwhile
};

// onShapeChange, then (if it succeeded) enqueue, of a clone of `plugin`, on the current device.
Run runOnce(IPluginV3* plugin, CapturingLogger& logger, std::vector<DynamicPluginTensorDesc> const& io, int nInputs)
{
    Run run;
    std::unique_ptr<IPluginV3> copy(plugin->clone());
    std::vector<PluginTensorDesc> in, out;
    for (int i = 0; i < nInputs; ++i)
    {
        in.push_back(io[i].desc);
    }
    out.push_back(io[nInputs].desc);
    out.push_back(io[nInputs + 1].desc);
    size_t const mark = logger.messages.size();
    run.shapeRc = runtime(copy.get())->onShapeChange(in.data(), nInputs, out.data(), 2);
    gLaunches.clear();
    if (run.shapeRc == 0)
    {
        std::vector<void const*> inputs;
        for (int i = 0; i < nInputs; ++i)
        {
            inputs.push_back(reinterpret_cast<void const*>(inputAddress(i)));
        }
        void* outputs[2] = {reinterpret_cast<void*>(kOut), reinterpret_cast<void*>(kRatios)};
        run.enqueueRc = runtime(copy.get())->enqueue(in.data(), out.data(), inputs.data(), outputs,
            reinterpret_cast<void*>(kWorkspace), nullptr);
    }
    for (size_t i = mark; i < logger.messages.size(); ++i)
    {
        run.said += (run.said.empty() ? "" : " | ") + logger.messages[i];
    }
    return run;
}

// The three launches a GatedSinkAttention(Q8) enqueue must make, variants named by symbol.
void checkLaunches(std::string const& what, std::string const& pages, int arch, bool scaled, float threshold,
    int32_t fixedSinks, int64_t ss)
{
    std::string const suffix = "|" + pages + "|" + std::to_string(arch);
    std::string const decide = "gate_decide|auto|" + std::to_string(arch);
    std::vector<std::string> gate{ptr(inputAddress(0)), ptr(inputAddress(1)), ptr(inputAddress(3)),
        ptr(inputAddress(5)), ptr(inputAddress(6)), ptr(kWorkspace), i32(L), i32(H), i32(SL), i32(ss), i32(fixedSinks),
        i32((L + 7) / 8), i32(P)};
    std::vector<std::string> decideArgs{ptr(kWorkspace), ptr(inputAddress(5)), ptr(inputAddress(6)), ptr(kRatios),
        i32(L), i32(H), i32(SL), i32(ss), i32(P), ptr(0), ptr(0)};
    std::vector<std::string> attention{ptr(inputAddress(0)), ptr(inputAddress(1)), ptr(inputAddress(2)),
        ptr(inputAddress(3)), ptr(inputAddress(4)), ptr(inputAddress(5)), ptr(inputAddress(6)), ptr(kRatios), ptr(kOut),
        f32(threshold), f32(1.0F / std::sqrt(static_cast<float>(D))), i32(L), i32(H), i32(SL), i32(ss),
        i32(fixedSinks), i32(P)};
    if (scaled)
    {
        gate.push_back(ptr(inputAddress(7)));          // k_scale right after P
        attention.push_back(ptr(inputAddress(7)));     // k_scale, v_scale right after P
        attention.push_back(ptr(inputAddress(8)));
    }
    for (auto* list : {&gate, &attention})
    {
        list->push_back(ptr(0));   // global and profile scratch: null
        list->push_back(ptr(0));
    }
    bool const three = gLaunches.size() == 3;
    check(three && gLaunches[0].symbol == "gate_partial_sums" + suffix && gLaunches[1].symbol == decide
            && gLaunches[2].symbol == "paged_attention" + suffix,
        what + ": the " + pages + "-page variants for sm_" + std::to_string(arch) + " launched: "
            + (three ? gLaunches[0].symbol + ", " + gLaunches[1].symbol + ", " + gLaunches[2].symbol
                     : std::to_string(gLaunches.size()) + " launches"));
    if (!three)
    {
        return;
    }
    check(gLaunches[0].args == gate && gLaunches[0].grid[0] == ss + SL + 2 && gLaunches[0].grid[1] == H
            && gLaunches[0].grid[2] == 8,
        what + ": gate_partial_sums arguments " + joined(gLaunches[0].args) + " (want " + joined(gate) + ")");
    check(gLaunches[1].args == decideArgs && gLaunches[1].grid[0] == ss,
        what + ": gate_decide arguments " + joined(gLaunches[1].args));
    check(gLaunches[2].args == attention && gLaunches[2].grid[1] == H,
        what + ": paged_attention arguments " + joined(gLaunches[2].args) + " (want " + joined(attention) + ")");
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 5)
    {
        std::fprintf(stderr, "usage: %s LIB THRESHOLD SINK_KV_BF16 FIXED_SINKS\n", argv[0]);
        return 2;
    }
    float const threshold = std::stof(argv[2]);
    int32_t const sinkKvBf16 = std::stoi(argv[3]);
    int32_t const fixedSinks = std::stoi(argv[4]);
    int64_t const SS = 2 + fixedSinks;

    // The driver double first (the plugins open the same libcuda.so.1 at first use).
    void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    auto setHook = cuda ? reinterpret_cast<void (*)(LaunchHook)>(dlsym(cuda, "driverDoubleSetLaunchHook")) : nullptr;
    gFunctionName = cuda ? reinterpret_cast<char const* (*) (void*)>(dlsym(cuda, "driverDoubleFunctionName")) : nullptr;
    auto retain = cuda ? reinterpret_cast<int (*)(void**, int)>(dlsym(cuda, "cuDevicePrimaryCtxRetain")) : nullptr;
    auto setCurrent = cuda ? reinterpret_cast<int (*)(void*)>(dlsym(cuda, "cuCtxSetCurrent")) : nullptr;
    check(setHook && gFunctionName && retain && setCurrent,
        "libcuda.so.1 is the CUDA driver TEST DOUBLE (LD_LIBRARY_PATH: tests/plugins/cpp standin-cuda)");
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    check(lib != nullptr, std::string("dlopen ") + argv[1] + (lib ? "" : std::string(": ") + dlerror()));
    if (!setHook || !gFunctionName || !retain || !setCurrent || !lib)
    {
        return 1;
    }
    setHook(onLaunch);
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(lib, "setLoggerFinder"));
    CapturingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    IPluginCreatorV3One* q8 = nullptr;
    IPluginCreatorV3One* plain = nullptr;
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        std::string const name = c->getPluginName();
        if (name == "GatedSinkAttentionQ8" || name == "GatedSinkAttention")
        {
            (name == "GatedSinkAttentionQ8" ? q8 : plain) = c;
        }
    }
    check(q8 && plain && !std::strcmp(q8->getPluginNamespace(), "dysink") && !std::strcmp(q8->getPluginVersion(), "1"),
        "getCreators has dysink::GatedSinkAttentionQ8 version 1 beside GatedSinkAttention");
    if (!q8 || !plain)
    {
        return 1;
    }
    PluginFieldCollection const* names = q8->getFieldNames();
    check(names->nbFields == 3 && !std::strcmp(names->fields[0].name, "threshold")
            && !std::strcmp(names->fields[1].name, "sink_kv_bf16")
            && !std::strcmp(names->fields[2].name, "fixed_sinks"),
        "GatedSinkAttentionQ8 field names = GatedSinkAttention's (the ONNX node's attributes)");
    Fields attrs;
    attrs.f("threshold", threshold).i("sink_kv_bf16", sinkKvBf16).i("fixed_sinks", fixedSinks)
        .s("plugin_namespace", "dysink").s("plugin_version", "1");
    std::unique_ptr<IPluginV3> plugin(q8->createPlugin("attn_q8", attrs.get(), TensorRTPhase::kBUILD));
    std::unique_ptr<IPluginV3> plainPlugin(plain->createPlugin("attn", attrs.get(), TensorRTPhase::kBUILD));
    check(plugin && plainPlugin && !std::strcmp(core(plugin.get())->getPluginName(), "GatedSinkAttentionQ8"),
        "GatedSinkAttentionQ8 created from the node's attributes");
    if (!plugin || !plainPlugin)
    {
        return 1;
    }
    Fields badVersion;
    badVersion.f("threshold", threshold).i("sink_kv_bf16", sinkKvBf16).i("fixed_sinks", 0).s("plugin_version", "2");
    std::unique_ptr<IPluginV3> refused(q8->createPlugin("bad", badVersion.get(), TensorRTPhase::kBUILD));
    check(!refused && logger.saw("dysink::GatedSinkAttentionQ8 version 2 is unknown"),
        "an unknown plugin_version refused, naming GatedSinkAttentionQ8");

    // ---------------- build-time calls ----------------
    IPluginV3OneBuild* b = build(plugin.get());
    for (DataType q : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        DataType in[9] = {q, q, q, DataType::kINT8, DataType::kINT8, DataType::kINT64, DataType::kINT64,
            DataType::kFLOAT, DataType::kFLOAT};
        DataType out[2];
        check(b->getOutputDataTypes(out, 2, in, 9) == 0 && out[0] == q && out[1] == DataType::kFLOAT,
            "output dtypes: q's, float32 (" + dataTypeText(q) + ")");
        check(b->getOutputDataTypes(out, 2, in, 7) != 0, "7 inputs refused by getOutputDataTypes");
    }
    ExprBuilder eb;
    DimsExprs shapes[9] = {exprs(eb, {L, H, D}), exprs(eb, {L, H, D}), exprs(eb, {L, H, D}), exprs(eb, {P, L, H, D}),
        exprs(eb, {P, L, H, D}), exprs(eb, {SL}), exprs(eb, {SS}), exprs(eb, {P, L, H}), exprs(eb, {P, L, H})};
    DimsExprs outShapes[2];
    check(b->getOutputShapes(shapes, 9, nullptr, 0, outShapes, 2, eb) == 0 && sameConstants(outShapes[0], {L, H, D})
            && sameConstants(outShapes[1], {SS}),
        "output shapes: out = q's, ratios = [S_sink]");

    auto allAccepted = [&](std::vector<DynamicPluginTensorDesc> const& io, int nInputs) {
        bool all = true;
        for (int32_t pos = 0; pos < nInputs + 2; ++pos)
        {
            all = all && b->supportsFormatCombination(pos, io.data(), nInputs, 2);
        }
        return all;
    };
    for (DataType q : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        for (DataType pool : {DataType::kINT8, DataType::kFP8})
        {
            check(allAccepted(q8Descs(q, pool, SS), 9),
                "accepted: q " + dataTypeText(q) + ", pools " + dataTypeText(pool) + ", float32 scales, linear");
        }
    }
    for (DataType q : {DataType::kFLOAT, DataType::kHALF})
    {
        check(allAccepted(q8Descs(q, DataType::kBF16, SS), 9),
            "accepted: bf16 pools under a " + dataTypeText(q) + " q");
    }
    {
        auto io = q8Descs(DataType::kBF16, DataType::kBF16, SS);
        check(!b->supportsFormatCombination(3, io.data(), 9, 2),
            "refused: bf16 pools under a bf16 q (the model's pages: GatedSinkAttention)");
        io = q8Descs(DataType::kHALF, DataType::kHALF, SS);
        check(!b->supportsFormatCombination(3, io.data(), 9, 2), "refused: pools in q's float16");
        io = q8Descs(DataType::kHALF, DataType::kINT8, SS);
        io[4].desc.type = DataType::kFP8;
        check(!b->supportsFormatCombination(4, io.data(), 9, 2), "refused: v_pool of another type than k_pool");
        bool scales = false;
        for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kINT8})
        {
            for (int pos : {7, 8})
            {
                io = q8Descs(DataType::kHALF, DataType::kINT8, SS);
                io[pos].desc.type = t;
                scales = scales || b->supportsFormatCombination(pos, io.data(), 9, 2);
            }
        }
        check(!scales, "refused: k_scale / v_scale other than float32");
        io = q8Descs(DataType::kHALF, DataType::kINT8, SS);
        io[5].desc.type = DataType::kINT32;
        check(!b->supportsFormatCombination(5, io.data(), 9, 2), "refused: int32 page ids (contract: int64)");
        io = q8Descs(DataType::kHALF, DataType::kINT8, SS);
        io[9].desc.type = DataType::kFLOAT;
        check(!b->supportsFormatCombination(9, io.data(), 9, 2), "refused: out of another type than q");
        io = q8Descs(DataType::kHALF, DataType::kINT8, SS);
        io[10].desc.type = DataType::kHALF;
        check(!b->supportsFormatCombination(10, io.data(), 9, 2), "refused: ratios other than float32");
        io = q8Descs(DataType::kINT8, DataType::kINT8, SS);
        check(!b->supportsFormatCombination(0, io.data(), 9, 2), "refused: an int8 q");
        bool linear = true;
        for (int pos = 0; pos < 11; ++pos)
        {
            io = q8Descs(DataType::kHALF, DataType::kINT8, SS);
            io[pos].desc.format = TensorFormat::kCHW32;
            linear = linear && !b->supportsFormatCombination(pos, io.data(), 9, 2);
        }
        check(linear, "refused: any non-linear format (kCHW32, an INT8 vector format) at every position");
        bool none = true;
        for (DataType t : {DataType::kBOOL, DataType::kUINT8})
        {
            for (int32_t pos = 0; pos < 11; ++pos)
            {
                io = q8Descs(DataType::kHALF, DataType::kINT8, SS);
                io[pos].desc.type = t;
                none = none && !b->supportsFormatCombination(pos, io.data(), 9, 2);
            }
        }
        check(none, "no BOOL or UINT8 input or output accepted");
        io = q8Descs(DataType::kHALF, DataType::kINT8, SS, 7);
        check(!b->supportsFormatCombination(0, io.data(), 7, 2), "refused: GatedSinkAttention's 7 inputs");
        auto plainIo = q8Descs(DataType::kHALF, DataType::kINT8, SS, 7);
        check(!build(plainPlugin.get())->supportsFormatCombination(3, plainIo.data(), 7, 2),
            "GatedSinkAttention still refuses int8 pools");
    }
    {
        auto io = q8Descs(DataType::kHALF, DataType::kINT8, SS);
        check(b->getWorkspaceSize(io.data(), 9, io.data() + 9, 2) == static_cast<size_t>(4 * (SS + SL + 2) * H * 8 * D),
            "workspace = gate partial sums, as GatedSinkAttention's");
        check(b->configurePlugin(io.data(), 9, io.data() + 9, 2) == 0, "configurePlugin accepts the contract shapes");
        auto bad = io;
        bad[7].desc.dims.d[2] = H + 1;
        check(b->configurePlugin(bad.data(), 9, bad.data() + 9, 2) != 0
                && logger.saw("GatedSinkAttentionQ8: k_scale and v_scale must be [P, L, H]"),
            "configurePlugin refuses a k_scale of another shape, with a message");
        bad = io;
        bad[8].desc.dims.d[0] = P + 1;
        check(b->configurePlugin(bad.data(), 9, bad.data() + 9, 2) != 0,
            "configurePlugin refuses a v_scale of another P");
        auto seven = q8Descs(DataType::kHALF, DataType::kINT8, SS, 7);
        check(b->configurePlugin(seven.data(), 7, seven.data() + 7, 2) != 0
                && logger.saw(
                    "expects 9 inputs (q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, k_scale, v_scale)"),
            "configurePlugin refuses 7 inputs, naming the 9");
    }
    {
        IPluginV3OneRuntime* r = runtime(plugin.get());
        std::string serialized = fieldsText(r->getFieldsToSerialize());
        std::unique_ptr<IPluginV3> again(
            q8->createPlugin("attn_q8", r->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
        check(again && !std::strcmp(core(again.get())->getPluginName(), "GatedSinkAttentionQ8")
                && fieldsText(runtime(again.get())->getFieldsToSerialize()) == serialized,
            "serialize -> create(kRUNTIME) round trip: " + serialized);
        std::unique_ptr<IPluginV3> copy(plugin->clone());
        check(copy && !std::strcmp(core(copy.get())->getPluginName(), "GatedSinkAttentionQ8"),
            "clone stays GatedSinkAttentionQ8");
    }

    // ---------------- kernels per page type, on the double's sm_87 (device 0, made current) ----------------
    Run run = runOnce(plugin.get(), logger, q8Descs(DataType::kHALF, DataType::kINT8, SS), 9);
    check(run.shapeRc == 0 && run.enqueueRc == 0, "int8 pools, float16 q, sm_87: loaded and enqueued " + run.said);
    checkLaunches("int8 pools", "int8", 87, true, threshold, fixedSinks, SS);
    run = runOnce(plugin.get(), logger, q8Descs(DataType::kHALF, DataType::kBF16, SS), 9);
    check(run.shapeRc == 0 && run.enqueueRc == 0, "bf16 pools, float16 q, sm_87: loaded and enqueued " + run.said);
    checkLaunches("bf16 pools", "bf16", 87, false, threshold, fixedSinks, SS);
    run = runOnce(plainPlugin.get(), logger, q8Descs(DataType::kHALF, DataType::kHALF, SS, 7), 7);
    check(run.shapeRc == 0 && run.enqueueRc == 0,
        "GatedSinkAttention, float16, sm_87: loaded and enqueued " + run.said);
    checkLaunches("GatedSinkAttention", "auto", 87, false, threshold, fixedSinks, SS);
    run = runOnce(plugin.get(), logger, q8Descs(DataType::kHALF, DataType::kFP8, SS), 9);
    check(run.shapeRc != 0 && run.said.find("fp8 K/V pages need sm_89 or newer") != std::string::npos
            && run.said.find("this GPU is sm_87") != std::string::npos
            && run.said.find("--kv-cache-dtype int8 --arch 87,90 --out DIR --overwrite") != std::string::npos,
        "fp8 pools on sm_87: refused in one line, int8 suggested: " + run.said);
    run = runOnce(plugin.get(), logger, q8Descs(DataType::kFLOAT, DataType::kINT8, SS), 9);
    check(run.shapeRc != 0
            && run.said.find("no embedded paged_attention (int8 pages) kernel for dtype float32") != std::string::npos
            && run.said.find("--kv-cache-dtype int8 --arch 87,90 --out DIR --overwrite") != std::string::npos,
        "int8 pools under a float32 q (no such variant): named with the rebuild command: " + run.said);
    run = runOnce(plugin.get(), logger, q8Descs(DataType::kBF16, DataType::kBF16, SS), 9);
    check(run.shapeRc != 0
            && run.said.find("pools of type bfloat16 under a bfloat16 q are not taken") != std::string::npos,
        "bf16 pools under a bf16 q at run time: refused: " + run.said);

    // ---------------- and on sm_90 (device 1's primary context made current) ----------------
    void* ctx = nullptr;
    check(retain(&ctx, 1) == 0 && setCurrent(ctx) == 0, "the double's device 1 (sm_90) made current");
    run = runOnce(plugin.get(), logger, q8Descs(DataType::kHALF, DataType::kFP8, SS), 9);
    check(run.shapeRc == 0 && run.enqueueRc == 0, "fp8 pools, float16 q, sm_90: loaded and enqueued " + run.said);
    checkLaunches("fp8 pools", "fp8", 90, true, threshold, fixedSinks, SS);
    run = runOnce(plugin.get(), logger, q8Descs(DataType::kHALF, DataType::kINT8, SS), 9);
    check(run.shapeRc != 0
            && run.said.find(
                   "this GPU is sm_90 but libdysink_plugins.so embeds paged_attention (int8 pages) only for sm_87")
                != std::string::npos
            && run.said.find("--kv-cache-dtype int8 --arch 87,90 --out DIR --overwrite") != std::string::npos,
        "int8 pools on sm_90 (int8 kernels embedded for sm_87 only): the architecture to add: " + run.said);

    std::printf("%d failures\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
