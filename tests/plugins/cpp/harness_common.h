// What the host-side test programs (plugin_harness.cpp, q8_harness.cpp, registration_harness.cpp) play of TensorRT: a
// capturing logger and its finder, a constant-folding IExprBuilder, tensor descriptors,
// PluginFieldCollections, serialized fields as text, the IPluginV3 capabilities; and the check line
// ("ok ..." / "FAIL ...") with its failure count. Test code, not part of the library.
#pragma once

#include "NvInferRuntime.h"

#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace harness
{
using namespace nvinfer1;

inline int gFailures = 0;

inline void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok" : "FAIL", what.c_str());
    gFailures += ok ? 0 : 1;
}

// --- test doubles for what TensorRT provides --------------------------------------------
class CapturingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            messages.emplace_back(msg);
        }
    }
    bool saw(char const* text) const
    {
        for (auto const& m : messages)
        {
            if (m.find(text) != std::string::npos)
            {
                return true;
            }
        }
        return false;
    }
    std::vector<std::string> messages;
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

class ConstImpl : public apiv::VDimensionExpr
{
public:
    explicit ConstImpl(int64_t v)
        : value(v)
    {
    }
    bool isConstant() const override
    {
        return true;
    }
    int64_t getConstantValue() const override
    {
        return value;
    }
    bool isSizeTensor() const override
    {
        return false;
    }
    int64_t value;
};

class ConstExpr : public IDimensionExpr
{
public:
    explicit ConstExpr(int64_t v)
        : mValue(v)
    {
        mImpl = &mValue;
    }

private:
    ConstImpl mValue;
};

class BuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        exprs.emplace_back(std::make_unique<ConstExpr>(value));
        return exprs.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;   // the plugins need no arithmetic on shapes
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    std::deque<std::unique_ptr<ConstExpr>> exprs;
};

class ExprBuilder : public IExprBuilder
{
public:
    ExprBuilder()
    {
        mImpl = &impl;
    }
    BuilderImpl impl;
};

inline DimsExprs exprs(ExprBuilder& b, std::vector<int64_t> const& dims)
{
    DimsExprs e{};
    e.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        e.d[i] = b.constant(dims[i]);
    }
    return e;
}

inline bool sameConstants(DimsExprs const& a, std::vector<int64_t> const& dims)
{
    if (a.nbDims != static_cast<int32_t>(dims.size()))
    {
        return false;
    }
    for (size_t i = 0; i < dims.size(); ++i)
    {
        if (!a.d[i] || !a.d[i]->isConstant() || a.d[i]->getConstantValue() != dims[i])
        {
            return false;
        }
    }
    return true;
}

inline DynamicPluginTensorDesc desc(std::vector<int64_t> const& dims, DataType type, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    d.desc.type = type;
    d.desc.format = format;
    d.min = d.opt = d.max = d.desc.dims;
    return d;
}

struct Fields
{
    std::deque<float> floats;
    std::deque<int32_t> ints;
    std::vector<PluginField> list;
    PluginFieldCollection fc{};

    Fields& f(char const* name, float v)
    {
        floats.push_back(v);
        list.emplace_back(name, &floats.back(), PluginFieldType::kFLOAT32, 1);
        return *this;
    }
    Fields& i(char const* name, int32_t v)
    {
        ints.push_back(v);
        list.emplace_back(name, &ints.back(), PluginFieldType::kINT32, 1);
        return *this;
    }
    Fields& s(char const* name, char const* v)
    {
        list.emplace_back(name, v, PluginFieldType::kCHAR, static_cast<int32_t>(std::strlen(v) + 1));
        return *this;
    }
    PluginFieldCollection const* get()
    {
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
        return &fc;
    }
};

// Serialized fields -> comparable text.
inline std::string fieldsText(PluginFieldCollection const* fc)
{
    std::string text;
    for (int32_t i = 0; fc && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        text += std::string(f.name) + "=";
        if (f.type == PluginFieldType::kFLOAT32)
        {
            text += std::to_string(*static_cast<float const*>(f.data));
        }
        else if (f.type == PluginFieldType::kINT32)
        {
            text += std::to_string(*static_cast<int32_t const*>(f.data));
        }
        else if (f.type == PluginFieldType::kCHAR)
        {
            text += static_cast<char const*>(f.data);
        }
        text += ";";
    }
    return text;
}

inline std::string dataTypeText(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kFP8: return "fp8";
    default: return "DataType " + std::to_string(static_cast<int>(type));
    }
}

inline IPluginV3OneBuild* build(IPluginV3* p)
{
    return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
inline IPluginV3OneRuntime* runtime(IPluginV3* p)
{
    return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}
inline IPluginV3OneCore* core(IPluginV3* p)
{
    return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}

} // namespace harness
