// What TensorRT hands a plugin, played by the harness: a logger (through setLoggerFinder), an
// IExprBuilder for static shapes, an IPluginResourceContext. Only what the IPluginV3 calls need.
#pragma once

#include "NvInferRuntime.h"

#include <deque>
#include <memory>
#include <string>
#include <vector>

namespace harness
{

// Keeps every message of severity kWARNING or worse (the plugins' refusals) for the failure lines.
class CapturingLogger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            messages.emplace_back(msg ? msg : "");
        }
    }
    // Messages logged since `mark` (an earlier messages.size()), joined with " | ".
    std::string since(size_t mark) const
    {
        std::string text;
        for (size_t i = mark; i < messages.size(); ++i)
        {
            text += (text.empty() ? "" : " | ") + messages[i];
        }
        return text;
    }
    std::vector<std::string> messages;
};

class LoggerFinder : public nvinfer1::ILoggerFinder
{
public:
    explicit LoggerFinder(nvinfer1::ILogger* logger)
        : mLogger(logger)
    {
    }
    nvinfer1::ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    nvinfer1::ILogger* mLogger;
};

// A dimension expression that is a known constant (every shape here is static).
class ConstantExpr : public nvinfer1::IDimensionExpr
{
public:
    explicit ConstantExpr(int64_t value)
        : mValue(value)
    {
        mImpl = &mValue;
    }

private:
    class Value : public nvinfer1::apiv::VDimensionExpr
    {
    public:
        explicit Value(int64_t v)
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
    Value mValue;
};

// IExprBuilder over constants: constant(), and operation() folded on two constants (what TensorRT
// does for static shapes). declareSizeTensor (data-dependent shapes) is not supported: nullptr.
class ExprBuilder : public nvinfer1::IExprBuilder
{
public:
    ExprBuilder()
    {
        mImpl = &mBuilder;
    }
    nvinfer1::DimsExprs dims(std::vector<int64_t> const& shape)
    {
        nvinfer1::DimsExprs e{};
        e.nbDims = static_cast<int32_t>(shape.size());
        for (size_t i = 0; i < shape.size(); ++i)
        {
            e.d[i] = constant(shape[i]);
        }
        return e;
    }

private:
    class Builder : public nvinfer1::apiv::VExprBuilder
    {
    public:
        nvinfer1::IDimensionExpr const* constant(int64_t value) override
        {
            exprs.emplace_back(std::make_unique<ConstantExpr>(value));
            return exprs.back().get();
        }
        nvinfer1::IDimensionExpr const* operation(nvinfer1::DimensionOperation op,
            nvinfer1::IDimensionExpr const& first, nvinfer1::IDimensionExpr const& second) override
        {
            if (!first.isConstant() || !second.isConstant())
            {
                return nullptr;
            }
            int64_t a = first.getConstantValue();
            int64_t b = second.getConstantValue();
            using Op = nvinfer1::DimensionOperation;
            switch (op)
            {
            case Op::kSUM: return constant(a + b);
            case Op::kPROD: return constant(a * b);
            case Op::kMAX: return constant(a > b ? a : b);
            case Op::kMIN: return constant(a < b ? a : b);
            case Op::kSUB: return constant(a - b);
            case Op::kEQUAL: return constant(a == b ? 1 : 0);
            case Op::kLESS: return constant(a < b ? 1 : 0);
            case Op::kFLOOR_DIV: return b ? constant(a / b - ((a % b != 0) && ((a < 0) != (b < 0)) ? 1 : 0)) : nullptr;
            case Op::kCEIL_DIV: return b ? constant(a / b + ((a % b != 0) && ((a < 0) == (b < 0)) ? 1 : 0)) : nullptr;
            }
            return nullptr;
        }
        nvinfer1::IDimensionExpr const* declareSizeTensor(
            int32_t, nvinfer1::IDimensionExpr const&, nvinfer1::IDimensionExpr const&) override
        {
            return nullptr;
        }
        std::deque<std::unique_ptr<ConstantExpr>> exprs;
    };
    Builder mBuilder;
};

// The resource context attachToContext receives; neither plugin uses its allocator or recorder.
class ResourceContext : public nvinfer1::IPluginResourceContext
{
public:
    nvinfer1::IGpuAllocator* getGpuAllocator() const noexcept override
    {
        return nullptr;
    }
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
};

} // namespace harness
