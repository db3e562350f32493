// Host-side harness of libdysink_plugins.so: no TensorRT library, no GPU. It plays the part of
// TensorRT where TensorRT would call the plugins (an IExprBuilder, PluginFieldCollections, a
// logger: harness_common.h) and checks creators, shapes, types, formats, workspace, serialization
// round trips, clone, attribute rejection and kernel selection (GatedSinkAttentionQ8 has its own:
// q8_harness.cpp). Built by tests/plugins/cpp/CMakeLists.txt and
// driven by tests/plugins/test_plugin_library.py:
//
//   plugin_harness LIB GSA_THRESHOLD GSA_SINK_KV_BF16 GSA_FIXED_SINKS RS_SINK_SIZE RS_K EMBEDDED_ARCH
//
// prints one line per check ("ok ..." / "FAIL ...") and exits non-zero if any failed.
#include "harness_common.h"

#include <dlfcn.h>

#include <cmath>
#include <limits>

using namespace nvinfer1;
using namespace harness;

int main(int argc, char** argv)
{
    if (argc != 8)
    {
        std::fprintf(stderr, "usage: %s LIB THRESHOLD SINK_KV_BF16 FIXED_SINKS SINK_SIZE K EMBEDDED_ARCH\n", argv[0]);
        return 2;
    }
    float const threshold = std::stof(argv[2]);
    int32_t const sinkKvBf16 = std::stoi(argv[3]);
    int32_t const fixedSinks = std::stoi(argv[4]);
    int32_t const sinkSize = std::stoi(argv[5]);
    int32_t const k = std::stoi(argv[6]);
    int32_t const embeddedArch = std::stoi(argv[7]);

    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    check(lib != nullptr, std::string("dlopen without TensorRT or a GPU driver") + (lib ? "" : dlerror()));
    if (!lib)
    {
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetFinder = void (*)(ILoggerFinder*);
    using FindKernel = int (*)(char const*, int, int, int, int, int, char*, int);
    using FindKernelPages = int (*)(char const*, int, int, int, int, int, int, char*, int);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetFinder>(dlsym(lib, "setLoggerFinder"));
    auto findKernel = reinterpret_cast<FindKernel>(dlsym(lib, "dysinkFindKernel"));
    auto findKernelPages = reinterpret_cast<FindKernelPages>(dlsym(lib, "dysinkFindKernelPages"));
    check(getCreators && setLoggerFinder && findKernel && findKernelPages,
        "exports getCreators, setLoggerFinder, dysinkFindKernel, dysinkFindKernelPages");
    CapturingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);

    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    check(n == 3, "three creators");
    IPluginCreatorV3One* gsaCreator = nullptr;
    IPluginCreatorV3One* rsCreator = nullptr;
    IPluginCreatorV3One* q8Creator = nullptr;
    for (int32_t i = 0; i < n; ++i)
    {
        InterfaceInfo info = creators[i]->getInterfaceInfo();
        check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1, "creator interface V3One");
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        check(!std::strcmp(c->getPluginNamespace(), "dysink") && !std::strcmp(c->getPluginVersion(), "1"),
            std::string(c->getPluginName()) + ": namespace dysink, version 1");
        std::string const name = c->getPluginName();
        (name == "GatedSinkAttention" ? gsaCreator : name == "RetrieveSinks" ? rsCreator : q8Creator) = c;
    }
    check(gsaCreator && rsCreator && q8Creator && !std::strcmp(q8Creator->getPluginName(), "GatedSinkAttentionQ8"),
        "the plugin names GatedSinkAttention, RetrieveSinks, GatedSinkAttentionQ8");
    if (!gsaCreator || !rsCreator || !q8Creator)
    {
        return 1;
    }
    PluginFieldCollection const* names = gsaCreator->getFieldNames();
    check(names->nbFields == 3 && !std::strcmp(names->fields[0].name, "threshold")
            && !std::strcmp(names->fields[1].name, "sink_kv_bf16") && !std::strcmp(names->fields[2].name, "fixed_sinks"),
        "GatedSinkAttention field names = the ONNX node's attributes");
    names = rsCreator->getFieldNames();
    check(names->nbFields == 2 && !std::strcmp(names->fields[0].name, "sink_size") && !std::strcmp(names->fields[1].name, "k"),
        "RetrieveSinks field names = the ONNX node's attributes");

    // ---------------- GatedSinkAttention, from the bundle's attributes ----------------
    Fields nodeAttrs;
    nodeAttrs.f("threshold", threshold).i("sink_kv_bf16", sinkKvBf16).i("fixed_sinks", fixedSinks)
        .s("plugin_namespace", "dysink").s("plugin_version", "1");
    IPluginV3* gsa = gsaCreator->createPlugin("attn", nodeAttrs.get(), TensorRTPhase::kBUILD);
    check(gsa != nullptr, "GatedSinkAttention created from the node's attributes");
    if (!gsa)
    {
        return 1;
    }
    check(!std::strcmp(core(gsa)->getPluginName(), "GatedSinkAttention"), "core capability");
    IPluginV3OneBuild* b = build(gsa);
    check(b->getNbOutputs() == 2, "two outputs");
    int64_t const L = 37, H = 3, D = 32, P = 6, SL = 4, SS = 2 + fixedSinks;
    for (DataType dt : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        DataType in[7] = {dt, dt, dt, dt, dt, DataType::kINT64, DataType::kINT64};
        DataType out[2];
        check(b->getOutputDataTypes(out, 2, in, 7) == 0 && out[0] == dt && out[1] == DataType::kFLOAT,
            "output dtypes: q's, float32 (" + std::to_string(static_cast<int>(dt)) + ")");
    }
    ExprBuilder eb;
    DimsExprs inShapes[7] = {exprs(eb, {L, H, D}), exprs(eb, {L, H, D}), exprs(eb, {L, H, D}), exprs(eb, {P, L, H, D}),
        exprs(eb, {P, L, H, D}), exprs(eb, {SL}), exprs(eb, {SS})};
    DimsExprs outShapes[2];
    check(b->getOutputShapes(inShapes, 7, nullptr, 0, outShapes, 2, eb) == 0 && sameConstants(outShapes[0], {L, H, D})
            && sameConstants(outShapes[1], {SS}),
        "output shapes: out = q's, ratios = [S_sink]");

    auto gsaDescs = [&](DataType dt, DataType ids, TensorFormat fmt) {
        return std::vector<DynamicPluginTensorDesc>{desc({L, H, D}, dt, fmt), desc({L, H, D}, dt), desc({L, H, D}, dt),
            desc({P, L, H, D}, dt), desc({P, L, H, D}, dt), desc({SL}, ids), desc({SS}, ids), desc({L, H, D}, dt),
            desc({SS}, DataType::kFLOAT)};
    };
    for (DataType dt : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        auto io = gsaDescs(dt, DataType::kINT64, TensorFormat::kLINEAR);
        bool all = true;
        for (int32_t pos = 0; pos < 9; ++pos)
        {
            all = all && b->supportsFormatCombination(pos, io.data(), 7, 2);
        }
        check(all, "linear formats of the ONNX contract accepted (" + std::to_string(static_cast<int>(dt)) + ")");
    }
    {
        auto io = gsaDescs(DataType::kHALF, DataType::kINT32, TensorFormat::kLINEAR);
        check(!b->supportsFormatCombination(5, io.data(), 7, 2), "int32 page ids refused (contract: int64)");
        io = gsaDescs(DataType::kINT8, DataType::kINT64, TensorFormat::kLINEAR);
        check(!b->supportsFormatCombination(0, io.data(), 7, 2), "int8 q refused");
        io = gsaDescs(DataType::kHALF, DataType::kINT64, TensorFormat::kHWC8);
        check(!b->supportsFormatCombination(0, io.data(), 7, 2), "non-linear format refused");
        io = gsaDescs(DataType::kHALF, DataType::kINT64, TensorFormat::kLINEAR);
        io[3].desc.type = DataType::kFLOAT;
        check(!b->supportsFormatCombination(3, io.data(), 7, 2), "pool dtype must equal q's");
        io[8].desc.type = DataType::kHALF;
        check(!b->supportsFormatCombination(8, io.data(), 7, 2), "ratios must be float32");
        bool eightBit = false;
        for (DataType t : {DataType::kINT8, DataType::kFP8, DataType::kBF16})
        {
            io = gsaDescs(DataType::kHALF, DataType::kINT64, TensorFormat::kLINEAR);
            io[3].desc.type = io[4].desc.type = t;
            eightBit = eightBit || b->supportsFormatCombination(3, io.data(), 7, 2);
        }
        check(!eightBit, "int8, fp8 and bf16 pools under a float16 q refused (GatedSinkAttentionQ8's, not this op's)");
        check(!b->supportsFormatCombination(0, io.data(), 9, 2), "the Q8 op's 9 inputs refused");
        // TensorRT plugin I/O cannot be BOOL or UINT8 (NvInferRuntimePlugin.h): no position takes them.
        bool none = true;
        for (DataType t : {DataType::kBOOL, DataType::kUINT8})
        {
            for (int32_t pos = 0; pos < 9; ++pos)
            {
                io = gsaDescs(DataType::kHALF, DataType::kINT64, TensorFormat::kLINEAR);
                io[pos].desc.type = t;
                none = none && !b->supportsFormatCombination(pos, io.data(), 7, 2);
            }
        }
        check(none, "no BOOL or UINT8 input or output accepted");
    }
    {
        auto io = gsaDescs(DataType::kHALF, DataType::kINT64, TensorFormat::kLINEAR);
        size_t ws = b->getWorkspaceSize(io.data(), 7, io.data() + 7, 2);
        check(ws == static_cast<size_t>(4 * (SS + SL + 2) * H * 8 * D), "workspace = gate partial sums");
        check(b->configurePlugin(io.data(), 7, io.data() + 7, 2) == 0, "configurePlugin accepts the contract shapes");
        auto bad = gsaDescs(DataType::kHALF, DataType::kINT64, TensorFormat::kLINEAR);
        for (int i : {0, 1, 2, 7})
        {
            bad[i].desc.dims.d[2] = 8;
        }
        for (int i : {3, 4})
        {
            bad[i].desc.dims.d[3] = 8;
        }
        check(b->configurePlugin(bad.data(), 7, bad.data() + 7, 2) != 0 && logger.saw("head dim 8"),
            "configurePlugin refuses head dim 8 with a message");
    }
    // Serialization round trip and clone.
    IPluginV3OneRuntime* r = runtime(gsa);
    std::string serialized = fieldsText(r->getFieldsToSerialize());
    IPluginV3* again = gsaCreator->createPlugin("attn", r->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
    check(again && fieldsText(runtime(again)->getFieldsToSerialize()) == serialized,
        "serialize -> create(runtime) round trip: " + serialized);
    IPluginV3* copy = gsa->clone();
    check(copy && fieldsText(runtime(copy)->getFieldsToSerialize()) == serialized, "clone keeps the attributes");
    // Runtime without a GPU driver: a clear error, no crash (the driver is opened lazily).
    {
        std::vector<DynamicPluginTensorDesc> io = gsaDescs(DataType::kHALF, DataType::kINT64, TensorFormat::kLINEAR);
        PluginTensorDesc pin[7], pout[2];
        for (int i = 0; i < 7; ++i)
        {
            pin[i] = io[i].desc;
        }
        pout[0] = io[7].desc;
        pout[1] = io[8].desc;
        size_t before = logger.messages.size();
        int32_t rc = runtime(copy)->onShapeChange(pin, 7, pout, 2);
        bool saidWhy = logger.messages.size() > before
            && (logger.saw("libcuda.so.1") || logger.saw("cuInit") || logger.saw("CUDA context") || logger.saw("embeds"));
        check(rc != 0 ? saidWhy : true, "onShapeChange without a usable GPU fails with a message");
    }
    delete again;
    delete copy;
    delete gsa;

    // Bad attributes: rejected with one logged line each.
    auto rejects = [&](IPluginCreatorV3One* c, Fields& f, char const* expect, std::string const& what) {
        size_t before = logger.messages.size();
        IPluginV3* p = c->createPlugin("bad", f.get(), TensorRTPhase::kBUILD);
        bool said = logger.messages.size() > before && logger.messages.back().find(expect) != std::string::npos;
        check(p == nullptr && said, what + " -> '" + (logger.messages.size() > before ? logger.messages.back() : "") + "'");
        delete p;
    };
    {
        Fields f;
        f.f("threshold", std::numeric_limits<float>::quiet_NaN()).i("sink_kv_bf16", 1).i("fixed_sinks", 0);
        rejects(gsaCreator, f, "threshold must be a finite number", "NaN threshold rejected");
        Fields v;
        v.f("threshold", 0.8F).i("sink_kv_bf16", 1).i("fixed_sinks", 0).s("plugin_version", "2");
        rejects(gsaCreator, v, "version 2 is unknown", "unknown plugin version rejected");
        Fields m;
        m.f("threshold", 0.8F).i("sink_kv_bf16", 1);
        rejects(gsaCreator, m, "needs the attributes", "missing attribute rejected");
        Fields s;
        s.f("threshold", 0.8F).i("sink_kv_bf16", 2).i("fixed_sinks", 0);
        rejects(gsaCreator, s, "sink_kv_bf16 must be 0 or 1", "sink_kv_bf16 = 2 rejected");
        Fields t;
        t.i("threshold", 1).i("sink_kv_bf16", 1).i("fixed_sinks", 0);
        rejects(gsaCreator, t, "threshold must be a float", "integer threshold rejected");
    }

    // ---------------- RetrieveSinks ----------------
    Fields rsAttrs;
    rsAttrs.i("sink_size", sinkSize).i("k", k).s("plugin_namespace", "dysink").s("plugin_version", "1");
    IPluginV3* rs = rsCreator->createPlugin("retrieve", rsAttrs.get(), TensorRTPhase::kBUILD);
    check(rs != nullptr, "RetrieveSinks created from the node's attributes");
    if (!rs)
    {
        return 1;
    }
    IPluginV3OneBuild* rb = build(rs);
    int64_t const C = 16, F = 512, Q = 3;
    {
        DataType in[6] = {DataType::kFLOAT, DataType::kINT64, DataType::kFLOAT, DataType::kINT32, DataType::kINT64,
            DataType::kINT64};
        DataType out[2];
        check(rb->getOutputDataTypes(out, 2, in, 6) == 0 && out[0] == DataType::kINT64 && out[1] == DataType::kFLOAT,
            "retrieve output dtypes int64, float32");
        DimsExprs rin[6] = {exprs(eb, {C, F}), exprs(eb, {C}), exprs(eb, {Q, F}), exprs(eb, {Q}), exprs(eb, {}), exprs(eb, {})};
        DimsExprs rout[2];
        check(rb->getOutputShapes(rin, 6, nullptr, 0, rout, 2, eb) == 0 && sameConstants(rout[0], {k})
                && sameConstants(rout[1], {k}),
            "retrieve output shapes [k] built through IExprBuilder::constant");
        std::vector<DynamicPluginTensorDesc> io{desc({C, F}, DataType::kFLOAT), desc({C}, DataType::kINT64),
            desc({Q, F}, DataType::kFLOAT), desc({Q}, DataType::kINT32), desc({}, DataType::kINT64), desc({}, DataType::kINT64),
            desc({k}, DataType::kINT64), desc({k}, DataType::kFLOAT)};
        bool all = true;
        for (int32_t pos = 0; pos < 8; ++pos)
        {
            all = all && rb->supportsFormatCombination(pos, io.data(), 6, 2);
        }
        check(all, "retrieve: the ONNX contract's dtypes accepted");
        for (DataType t : {DataType::kBOOL, DataType::kUINT8, DataType::kINT64})
        {
            io[3].desc.type = t;
            check(!rb->supportsFormatCombination(3, io.data(), 6, 2),
                "retrieve: query_valid of type " + std::to_string(static_cast<int>(t))
                    + " refused (int32; BOOL and UINT8 are not plugin I/O)");
        }
        io[3].desc.type = DataType::kINT32;
        check(rb->getWorkspaceSize(io.data(), 6, io.data() + 6, 2) == 4 * C, "retrieve workspace = 4 * C");
        check(rb->configurePlugin(io.data(), 6, io.data() + 6, 2) == 0, "retrieve configurePlugin");
        io[0].desc.dims.d[0] = io[1].desc.dims.d[0] = 2048;
        check(rb->configurePlugin(io.data(), 6, io.data() + 6, 2) != 0 && logger.saw("exceeds the kernel's 1024"),
            "retrieve refuses a 2048-entry bank");
    }
    {
        IPluginV3OneRuntime* rr = runtime(rs);
        std::string text = fieldsText(rr->getFieldsToSerialize());
        IPluginV3* back = rsCreator->createPlugin("retrieve", rr->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
        check(back && fieldsText(runtime(back)->getFieldsToSerialize()) == text, "retrieve round trip: " + text);
        IPluginV3* copy2 = rs->clone();
        check(copy2 && fieldsText(runtime(copy2)->getFieldsToSerialize()) == text, "retrieve clone");
        delete back;
        delete copy2;
    }
    for (int32_t badK : {0, 9})
    {
        Fields f;
        f.i("sink_size", 0).i("k", badK);
        rejects(rsCreator, f, "k must lie in 1..8", "k = " + std::to_string(badK) + " rejected");
    }
    delete rs;

    // ---------------- kernel selection ----------------
    char msg[512];
    int dt = 1;   // float16
    int got = findKernel("paged_attention", dt, 32, 0, 1, embeddedArch, msg, sizeof msg);
    check(got == embeddedArch, "paged_attention cubin found for sm_" + std::to_string(embeddedArch) + ": " + msg);
    got = findKernel("paged_attention", dt, 32, 0, 1, 100, msg, sizeof msg);
    std::string const addArch = "dysink-export plugins --bundle BUNDLE --arch " + std::to_string(embeddedArch)
        + ",100 --out DIR --overwrite";
    check(got < 0 && std::strstr(msg, "this GPU is sm_100") && std::strstr(msg, addArch.c_str()),
        std::string("missing architecture named with the command that adds it: ") + msg);
    got = findKernel("paged_attention", dt, 32, 0, 1, 121, msg, sizeof msg);
    check(got < 0 && std::strstr(msg, "sm_121, which the compiled kernels do not support")
            && std::strstr(msg, ("embeds paged_attention for sm_" + std::to_string(embeddedArch)).c_str())
            && !std::strstr(msg, "--out DIR"),
        std::string("an architecture the CLI cannot compile for: said so, no command suggested: ") + msg);
    got = findKernel("paged_attention", dt, 48, 0, 1, embeddedArch, msg, sizeof msg);
    check(got < 0 && std::strstr(msg, "head dim 48"), std::string("unknown variant named: ") + msg);
    got = findKernel("gate_decide", -1, 32, 2, -1, embeddedArch, msg, sizeof msg);
    check(got == embeddedArch, std::string("gate_decide for 2 heads: ") + msg);
    // Page types: this library embeds the model dtype's pages only (a kernel directory of one
    // --kv-cache-dtype); GatedSinkAttentionQ8's kernels are another build (q8_harness.cpp).
    got = findKernelPages("paged_attention", dt, 32, 0, 1, 0, embeddedArch, msg, sizeof msg);
    check(got == embeddedArch, std::string("pages auto: the same cubin as dysinkFindKernel: ") + msg);
    got = findKernelPages("paged_attention", dt, 32, 0, 1, 2, embeddedArch, msg, sizeof msg);
    std::string const rebuildInt8 = "dysink-export plugins --bundle BUNDLE --kv-cache-dtype int8 --arch "
        + std::to_string(embeddedArch) + " --out DIR --overwrite";
    check(got < 0 && std::strstr(msg, "has no paged_attention kernels for int8 K/V pages (it embeds auto pages)")
            && std::strstr(msg, "dysink-export kernels --kv-cache-dtype int8") && std::strstr(msg, rebuildInt8.c_str()),
        std::string("int8 pages missing: the --kv-cache-dtype to compile and rebuild with: ") + msg);
    if (embeddedArch < 89)
    {
        got = findKernelPages("gate_partial_sums", dt, 32, 0, 1, 3, embeddedArch, msg, sizeof msg);
        check(got < 0 && std::strstr(msg, "fp8 K/V pages need sm_89 or newer")
                && std::strstr(msg, "--kv-cache-dtype int8 --arch"),
            std::string("fp8 pages on an older GPU: int8 suggested: ") + msg);
    }
    if (embeddedArch / 10 == 8)
    {
        got = findKernel("paged_attention", dt, 32, 0, 1, 89, msg, sizeof msg);
        check(got == embeddedArch, "an sm_89 GPU runs the sm_" + std::to_string(embeddedArch) + " cubin (same major)");
    }

    std::printf("%d failures\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
