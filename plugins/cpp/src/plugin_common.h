// What the plugins share: the logger, attribute fields, dtype mapping.
#pragma once

#include "NvInferRuntime.h"
#include "kernel_table.h"

#include <string>
#include <vector>

namespace dysink
{

constexpr char const* kPluginNamespace = "dysink";
constexpr char const* kPluginVersion = "1";

// Messages go to TensorRT's logger once setLoggerFinder gave us one, else to stderr.
void setLoggerFinderImpl(nvinfer1::ILoggerFinder* finder);
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message);
inline void logError(std::string const& message)
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}

// Attribute values read from a PluginFieldCollection (ONNX node attributes, or serialized fields).
struct FieldReader
{
    explicit FieldReader(nvinfer1::PluginFieldCollection const* fc)
        : mFc(fc)
    {
    }
    // true when present; false when absent. Sets `bad` when present with an unusable type.
    bool getFloat(char const* name, double& out, std::string& bad) const;
    bool getInt(char const* name, int64_t& out, std::string& bad) const;
    bool getString(char const* name, std::string& out) const;
    // Names in the collection that are not in `known` (and not plugin_namespace / plugin_version).
    std::vector<std::string> unknown(std::vector<char const*> const& known) const;

private:
    nvinfer1::PluginField const* find(char const* name) const;
    nvinfer1::PluginFieldCollection const* mFc;
};

// "plugin_version" present and not "1": one error line, returns false.
bool checkVersionField(FieldReader const& fields, char const* op, std::string& error);

int32_t toKDtype(nvinfer1::DataType type);

// "float16", "int8", "fp8 (e4m3)", ... for messages.
std::string dataTypeName(nvinfer1::DataType type);

} // namespace dysink
