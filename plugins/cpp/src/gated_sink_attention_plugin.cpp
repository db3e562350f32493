// GatedSinkAttention and GatedSinkAttentionQ8: three kernel launches (gate_partial_sums, gate_decide,
// paged_attention), contract of dysink_deploy/ops/gated_sink_attention.py. Inputs: q, k_cur, v_cur
// [L, H, D] (float, half, bf16); k_pool, v_pool [P, L, H, D] (one dtype); local_ids, sink_ids int64
// (-1, or any id outside [0, P), = empty slot: the kernels take P and never read outside the pools,
// whatever the id buffers hold). Outputs: out [L, H, D] (q's dtype), ratios float32 [S_sink].
// GatedSinkAttention: the pools hold q's dtype (kernels of pages "auto").
// GatedSinkAttentionQ8 (ops/onnx_functions.py): + k_scale, v_scale float32 [P, L, H] (inputs 7, 8);
// pools int8 or fp8 e4m3 (kernels of pages "int8" / "fp8", which read q * scale, ops/kv_pages.py,
// and take k_scale / v_scale right after P), or bf16 under an fp16 / fp32 q (pages "bf16": read and
// cast, the scales unused). The Q8 node's attributes are GatedSinkAttention's.
//
// 8-bit plugin inputs in TensorRT: what the 10.3.0 and 11.1 headers and public threads say. NOT
// VERIFIED: this plugin has never run on TensorRT (TensorRT cannot be installed where it is built
// and tested; only its host logic runs, against test doubles).
// - DataType::kINT8 (2, "signed 8-bit integer representing a quantized floating-point value") and
//   kFP8 (6: 1 sign, 4 exponent, 3 mantissa bits, bias 7 = torch's float8_e4m3fn) are plugin I/O
//   types: only kBOOL and kUINT8 are excluded (PluginTensorDesc::type, getOutputDataTypes). The
//   pools are bytes as stored, in kLINEAR (contiguous [P, L, H, D]), the only format accepted here.
// - PluginTensorDesc::scale (TensorRT's per-tensor INT8 scale, -1 when invalid) is ignored: the
//   scales are the k_scale / v_scale inputs, one per (page, token, head).
// - Weakly typed networks hand plugins kFLOAT / kINT32 types and choose precisions themselves
//   (NvInferRuntime.h); an INT8 tensor there needs a calibrator or a dynamic range (setDynamicRange,
//   deprecated since 10.1 for explicit quantization; NVIDIA/TensorRT#1973: "input/output with
//   DataType Int8 in network without Q/DQ layers must have dynamic range set"), and an int8 plugin
//   input in such a build was reported to fail format selection (NVIDIA/TensorRT#3959). So the
//   network must be strongly typed: TensorRT 10.x NetworkDefinitionCreationFlag::kSTRONGLY_TYPED
//   (trtexec --stronglyTyped); 11.x networks always are (the flag is deprecated and ignored). Then a
//   tensor's type is the ONNX graph's (int8 / float8e4m3fn pools stay so) and no range is needed.
// - TensorRT 10.3 has BuilderFlag::kFP8, "Enable plugins with FP8 input/output", not supported with
//   hardware-compatibility mode; 11.1 has no precision builder flags. Whether a 10.x strongly typed
//   build also needs that flag for an fp8 plugin input is not known here.
// - Not known either: whether each version's ONNX parser takes a float8e4m3fn graph input, and
//   whether TensorRT hands an int8 / fp8 network input to the plugin without a reformat.
#include "plugins.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

using namespace nvinfer1;

namespace dysink
{

GatedSinkAttentionPlugin::GatedSinkAttentionPlugin(
    AttentionOp op, float threshold, int32_t sinkKvBf16, int32_t fixedSinks)
    : mOp(op)
    , mThreshold(threshold)
    , mSinkKvBf16(sinkKvBf16)
    , mFixedSinks(fixedSinks)
{
}

IPluginV3* GatedSinkAttentionPlugin::clone() noexcept
{
    return copyOf(*this);
}

int32_t GatedSinkAttentionPlugin::pagesOf(AttentionOp op, DataType q, DataType pool)
{
    if (op == AttentionOp::kPlain)
    {
        return pool == q ? kPagesAuto : -1;
    }
    switch (pool)
    {
    case DataType::kINT8: return kPagesInt8;
    case DataType::kFP8: return kPagesFP8;
    case DataType::kBF16: return q == DataType::kHALF || q == DataType::kFLOAT ? kPagesBF16 : -1;
    default: return -1;   // q's own dtype: a GatedSinkAttention node
    }
}

int32_t GatedSinkAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != inputCount() || nbOutputs != 2)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = DataType::kFLOAT;
    return 0;
}

int32_t GatedSinkAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != inputCount() || nbOutputs != 2)
    {
        return -1;
    }
    outputs[0] = inputs[0];   // out: q's shape
    outputs[1] = inputs[6];   // ratios: one per sink slot
    return 0;
}

bool GatedSinkAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    int32_t const n = inputCount();
    if (nbInputs != n || nbOutputs != 2 || pos < 0 || pos >= n + 2)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    // Decided from positions 0..pos only (TensorRT fills the later ones with placeholders).
    DataType const q = inOut[0].desc.type;
    switch (pos)
    {
    case 0: return q == DataType::kFLOAT || q == DataType::kHALF || q == DataType::kBF16;
    case 1: case 2: return d.type == q;                          // k_cur, v_cur
    case 3: return pagesOf(mOp, q, d.type) >= 0;                 // k_pool
    case 4: return d.type == inOut[3].desc.type;                 // v_pool: k_pool's
    case 5: case 6: return d.type == DataType::kINT64;           // local_ids, sink_ids
    default: break;
    }
    if (pos == n)
    {
        return d.type == q;                                      // out
    }
    return d.type == DataType::kFLOAT;                           // k_scale, v_scale (Q8); ratios
}

std::string GatedSinkAttentionPlugin::checkShapes(DynamicPluginTensorDesc const* in, int32_t nbInputs) const
{
    bool const q8 = mOp == AttentionOp::kQ8;
    if (nbInputs != inputCount())
    {
        return std::string("expects ") + std::to_string(inputCount())
            + " inputs (q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids" + (q8 ? ", k_scale, v_scale" : "")
            + "), got " + std::to_string(nbInputs);
    }
    Dims const& q = in[0].desc.dims;
    if (q.nbDims != 3)
    {
        return "q must be [L, H, D], got " + std::to_string(q.nbDims) + " dims";
    }
    for (int32_t i = 1; i < 3; ++i)
    {
        Dims const& t = in[i].desc.dims;
        if (t.nbDims != 3 || t.d[0] != q.d[0] || t.d[1] != q.d[1] || t.d[2] != q.d[2])
        {
            return "k_cur and v_cur must have q's shape";
        }
    }
    for (int32_t i = 3; i < 5; ++i)
    {
        Dims const& p = in[i].desc.dims;
        if (p.nbDims != 4 || p.d[1] != q.d[0] || p.d[2] != q.d[1] || p.d[3] != q.d[2])
        {
            return "k_pool and v_pool must be [P, L, H, D] with q's L, H, D";
        }
    }
    int64_t const pages = in[3].desc.dims.d[0];
    if (pages >= 0 && in[4].desc.dims.d[0] >= 0 && pages != in[4].desc.dims.d[0])
    {
        return "k_pool and v_pool must have the same number of pages";
    }
    for (int32_t i = 7; q8 && i < 9; ++i)
    {
        Dims const& s = in[i].desc.dims;
        if (s.nbDims != 3 || s.d[1] != q.d[0] || s.d[2] != q.d[1] || (pages >= 0 && s.d[0] >= 0 && s.d[0] != pages))
        {
            return "k_scale and v_scale must be [P, L, H] with the pools' P and q's L, H (one scale per page, "
                   "token and head)";
        }
    }
    if (in[5].desc.dims.nbDims != 1 || in[6].desc.dims.nbDims != 1)
    {
        return "local_ids and sink_ids must be 1-D";
    }
    if (q.d[2] >= 0 && (q.d[2] < 16 || q.d[2] > 256))
    {
        return "head dim " + std::to_string(q.d[2]) + " is outside the kernels' 16..256";
    }
    if (in[6].desc.dims.d[0] >= 0 && mFixedSinks > in[6].desc.dims.d[0])
    {
        return "fixed_sinks (" + std::to_string(mFixedSinks) + ") exceeds the sink slots ("
            + std::to_string(in[6].desc.dims.d[0]) + ")";
    }
    return "";
}

size_t GatedSinkAttentionPlugin::workspaceBytes(int64_t nSink, int64_t nLocal, int64_t heads, int64_t headDim)
{
    if (nSink <= 0)
    {
        return 0;
    }
    return static_cast<size_t>(4 * (nSink + nLocal + 2) * heads * kGateSplits * headDim);
}

size_t GatedSinkAttentionPlugin::getWorkspaceSize(
    DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    if (nbInputs != inputCount())
    {
        return 0;
    }
    Dims const& q = inputs[0].max;
    return workspaceBytes(inputs[6].max.d[0], inputs[5].max.d[0], q.d[1], q.d[2]);
}

int32_t GatedSinkAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t) noexcept
{
    std::string const name = getPluginName();
    if (nbInputs != inputCount())
    {
        logError(name + ": expects " + std::to_string(inputCount()) + " inputs, got " + std::to_string(nbInputs));
        return -1;
    }
    mTokens = static_cast<int32_t>(in[0].dims.d[0]);
    mHeads = static_cast<int32_t>(in[0].dims.d[1]);
    mHeadDim = static_cast<int32_t>(in[0].dims.d[2]);
    mLocal = static_cast<int32_t>(in[5].dims.d[0]);
    mSink = static_cast<int32_t>(in[6].dims.d[0]);
    // P for the kernels' page-id bound; both pools have it (checkShapes). A count past int32 is
    // clamped: ids up to 2^31 - 1 still address pages, none beyond is read.
    int64_t pages = std::min(in[3].dims.d[0], in[4].dims.d[0]);
    mPages = static_cast<int32_t>(std::clamp<int64_t>(pages, 0, std::numeric_limits<int32_t>::max()));
    int32_t dtype = toKDtype(in[0].type);
    mPageType = pagesOf(mOp, in[0].type, in[3].type);
    if (mPageType < 0)
    {
        logError(name + ": pools of type " + dataTypeName(in[3].type) + " under a " + dataTypeName(in[0].type)
            + " q are not taken (" + (mOp == AttentionOp::kQ8 ? "int8, fp8, or bf16 under float16 / float32"
                                                              : "the pools must have q's dtype")
            + ")");
        return -1;
    }
    // bf16 rounding is the identity on bf16 q (its variants are built without it).
    int32_t sinkBf16 = (mSinkKvBf16 && dtype != kBF16) ? 1 : 0;
    std::string error;
    int32_t arch = currentDeviceArch(error);
    if (arch < 0)
    {
        logError(name + ": " + error);
        return -1;
    }
    // gate_decide reads no pages: one variant for every page type.
    KernelKey attnKey{"paged_attention", dtype, mHeadDim, 0, sinkBf16, mPageType};
    KernelKey partialKey{"gate_partial_sums", dtype, mHeadDim, 0, sinkBf16, mPageType};
    KernelKey decideKey{"gate_decide", kAnyDtype, mHeadDim, mHeads, -1, kPagesAuto};
    KernelImage const* attn = findKernelImage(attnKey, arch, error);
    KernelImage const* partial = attn ? findKernelImage(partialKey, arch, error) : nullptr;
    KernelImage const* decide = partial ? findKernelImage(decideKey, arch, error) : nullptr;
    if (!decide || !loadKernel(attn, mAttention, error) || !loadKernel(partial, mPartial, error)
        || !loadKernel(decide, mDecide, error))
    {
        logError(name + ": " + error);
        return -1;
    }
    return 0;
}

int32_t GatedSinkAttentionPlugin::enqueue(PluginTensorDesc const*, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (!mAttention.function)
    {
        logError(std::string(getPluginName()) + ": enqueue before onShapeChange loaded the kernels");
        return -1;
    }
    CUdeviceptr q = reinterpret_cast<CUdeviceptr>(inputs[0]);
    CUdeviceptr kCur = reinterpret_cast<CUdeviceptr>(inputs[1]);
    CUdeviceptr vCur = reinterpret_cast<CUdeviceptr>(inputs[2]);
    CUdeviceptr kPool = reinterpret_cast<CUdeviceptr>(inputs[3]);
    CUdeviceptr vPool = reinterpret_cast<CUdeviceptr>(inputs[4]);
    CUdeviceptr localIds = reinterpret_cast<CUdeviceptr>(inputs[5]);
    CUdeviceptr sinkIds = reinterpret_cast<CUdeviceptr>(inputs[6]);
    CUdeviceptr out = reinterpret_cast<CUdeviceptr>(outputs[0]);
    CUdeviceptr ratios = reinterpret_cast<CUdeviceptr>(outputs[1]);
    // int8 / fp8 pages: the scales go right after P (kernels.json; none for auto and bf16 pages).
    bool const scaled = pagesScaled(mPageType);
    CUdeviceptr kScale = scaled ? reinterpret_cast<CUdeviceptr>(inputs[7]) : 0;
    CUdeviceptr vScale = scaled ? reinterpret_cast<CUdeviceptr>(inputs[8]) : 0;
    CUdeviceptr partial = reinterpret_cast<CUdeviceptr>(workspace);
    CUstream cuStream = reinterpret_cast<CUstream>(stream);
    CUresult result = CUDA_SUCCESS;
    if (mSink > 0)
    {
        int32_t nSplit = mPartial.image->nSplit;
        int32_t perSplit = (mTokens + nSplit - 1) / nSplit;
        ArgList a;
        a.add(&q).add(&kCur).add(&kPool).add(&localIds).add(&sinkIds).add(&partial);
        a.add(&mTokens).add(&mHeads).add(&mLocal).add(&mSink).add(&mFixedSinks).add(&perSplit).add(&mPages);
        if (scaled)
        {
            a.add(&kScale);
        }
        result = launchKernel(mPartial, mSink + mLocal + 2, mHeads, nSplit, a, cuStream);
        if (result == CUDA_SUCCESS)
        {
            ArgList b;
            b.add(&partial).add(&localIds).add(&sinkIds).add(&ratios);
            b.add(&mTokens).add(&mHeads).add(&mLocal).add(&mSink).add(&mPages);
            result = launchKernel(mDecide, mSink, 1, 1, b, cuStream);
        }
    }
    if (result == CUDA_SUCCESS)
    {
        float smScale = 1.0F / std::sqrt(static_cast<float>(mHeadDim));
        ArgList c;
        c.add(&q).add(&kCur).add(&vCur).add(&kPool).add(&vPool).add(&localIds).add(&sinkIds).add(&ratios).add(&out);
        c.add(&mThreshold).add(&smScale).add(&mTokens).add(&mHeads).add(&mLocal).add(&mSink).add(&mFixedSinks)
            .add(&mPages);
        if (scaled)
        {
            c.add(&kScale).add(&vScale);
        }
        int32_t blockM = mAttention.image->blockM;
        result = launchKernel(mAttention, (mTokens + blockM - 1) / blockM, mHeads, 1, c, cuStream);
    }
    return launchStatus(result);
}

PluginFieldCollection const* GatedSinkAttentionPlugin::getFieldsToSerialize() noexcept
{
    return serialize({PluginField("threshold", &mThreshold, PluginFieldType::kFLOAT32, 1),
        PluginField("sink_kv_bf16", &mSinkKvBf16, PluginFieldType::kINT32, 1),
        PluginField("fixed_sinks", &mFixedSinks, PluginFieldType::kINT32, 1)});
}

GatedSinkAttentionCreator::GatedSinkAttentionCreator(AttentionOp op)
    : mOp(op)
{
    setFieldNames({PluginField("threshold", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("sink_kv_bf16", nullptr, PluginFieldType::kINT32, 1),
        PluginField("fixed_sinks", nullptr, PluginFieldType::kINT32, 1)});
}

IPluginV3* GatedSinkAttentionCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        FieldReader fields(fc);
        char const* op = GatedSinkAttentionPlugin::opName(mOp);
        std::string where = std::string(op) + " '" + (name ? name : "") + "': ";
        std::string bad;
        if (!checkVersionField(fields, op, bad))
        {
            logError(where + bad);
            return nullptr;
        }
        double threshold = 0;
        int64_t sinkKvBf16 = 0;
        int64_t fixedSinks = 0;
        bool has = fields.getFloat("threshold", threshold, bad) & fields.getInt("sink_kv_bf16", sinkKvBf16, bad)
            & fields.getInt("fixed_sinks", fixedSinks, bad);
        if (!bad.empty() || !has)
        {
            logError(where + (bad.empty() ? "needs the attributes threshold, sink_kv_bf16 and fixed_sinks" : bad));
            return nullptr;
        }
        for (std::string const& unknown : fields.unknown({"threshold", "sink_kv_bf16", "fixed_sinks"}))
        {
            logMessage(ILogger::Severity::kWARNING, where + "ignoring unknown attribute " + unknown);
        }
        if (!std::isfinite(threshold))
        {
            logError(where + "threshold must be a finite number, got " + std::to_string(threshold));
            return nullptr;
        }
        if (sinkKvBf16 != 0 && sinkKvBf16 != 1)
        {
            logError(where + "sink_kv_bf16 must be 0 or 1, got " + std::to_string(sinkKvBf16));
            return nullptr;
        }
        if (fixedSinks < 0 || fixedSinks > 64)
        {
            logError(where + "fixed_sinks must lie in 0..64, got " + std::to_string(fixedSinks));
            return nullptr;
        }
        return new GatedSinkAttentionPlugin(mOp,
            static_cast<float>(threshold), static_cast<int32_t>(sinkKvBf16), static_cast<int32_t>(fixedSinks));
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace dysink
