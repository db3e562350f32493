// GatedSinkAttention: three kernel launches (gate_partial_sums, gate_decide, paged_attention),
// contract of dysink_deploy/ops/gated_sink_attention.py. Inputs: q, k_cur, v_cur [L, H, D];
// k_pool, v_pool [P, L, H, D] (one dtype: float, half, bf16); local_ids, sink_ids int64 (-1, or any id
// outside [0, P), = empty slot: the kernels take P and never read outside the pools, whatever the id
// buffers hold). Outputs: out [L, H, D] (q's dtype), ratios float32 [S_sink].
#include "plugins.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

using namespace nvinfer1;

namespace dysink
{

GatedSinkAttentionPlugin::GatedSinkAttentionPlugin(float threshold, int32_t sinkKvBf16, int32_t fixedSinks)
    : mThreshold(threshold)
    , mSinkKvBf16(sinkKvBf16)
    , mFixedSinks(fixedSinks)
{
}

IPluginV3* GatedSinkAttentionPlugin::clone() noexcept
{
    return copyOf(*this);
}

int32_t GatedSinkAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kInputs || nbOutputs != 2)
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
    if (nbInputs != kInputs || nbOutputs != 2)
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
    if (nbInputs != kInputs || nbOutputs != 2 || pos < 0 || pos >= kInputs + 2)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return d.type == DataType::kFLOAT || d.type == DataType::kHALF || d.type == DataType::kBF16;
    case 1: case 2: case 3: case 4: case 7: return d.type == inOut[0].desc.type;
    case 5: case 6: return d.type == DataType::kINT64;
    default: return d.type == DataType::kFLOAT;   // 8: ratios
    }
}

std::string GatedSinkAttentionPlugin::checkShapes(DynamicPluginTensorDesc const* in, int32_t nbInputs) const
{
    if (nbInputs != kInputs)
    {
        return "expects 7 inputs (q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids), got "
            + std::to_string(nbInputs);
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
    if (in[3].desc.dims.d[0] >= 0 && in[4].desc.dims.d[0] >= 0 && in[3].desc.dims.d[0] != in[4].desc.dims.d[0])
    {
        return "k_pool and v_pool must have the same number of pages";
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
    if (nbInputs != kInputs)
    {
        return 0;
    }
    Dims const& q = inputs[0].max;
    return workspaceBytes(inputs[6].max.d[0], inputs[5].max.d[0], q.d[1], q.d[2]);
}

int32_t GatedSinkAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t) noexcept
{
    if (nbInputs != kInputs)
    {
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
    // bf16 rounding is the identity on bf16 pools: those use the lean variant.
    int32_t sinkBf16 = (mSinkKvBf16 && dtype != kBF16) ? 1 : 0;
    std::string error;
    int32_t arch = currentDeviceArch(error);
    if (arch < 0)
    {
        logError("GatedSinkAttention: " + error);
        return -1;
    }
    KernelKey attnKey{"paged_attention", dtype, mHeadDim, 0, sinkBf16};
    KernelKey partialKey{"gate_partial_sums", dtype, mHeadDim, 0, sinkBf16};
    KernelKey decideKey{"gate_decide", kAnyDtype, mHeadDim, mHeads, -1};
    KernelImage const* attn = findKernelImage(attnKey, arch, error);
    KernelImage const* partial = attn ? findKernelImage(partialKey, arch, error) : nullptr;
    KernelImage const* decide = partial ? findKernelImage(decideKey, arch, error) : nullptr;
    if (!decide || !loadKernel(attn, mAttention, error) || !loadKernel(partial, mPartial, error)
        || !loadKernel(decide, mDecide, error))
    {
        logError("GatedSinkAttention: " + error);
        return -1;
    }
    return 0;
}

int32_t GatedSinkAttentionPlugin::enqueue(PluginTensorDesc const*, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (!mAttention.function)
    {
        logError("GatedSinkAttention: enqueue before onShapeChange loaded the kernels");
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

GatedSinkAttentionCreator::GatedSinkAttentionCreator()
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
        std::string where = std::string("GatedSinkAttention '") + (name ? name : "") + "': ";
        std::string bad;
        if (!checkVersionField(fields, "GatedSinkAttention", bad))
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
        return new GatedSinkAttentionPlugin(
            static_cast<float>(threshold), static_cast<int32_t>(sinkKvBf16), static_cast<int32_t>(fixedSinks));
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace dysink
