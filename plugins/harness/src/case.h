// One op's case: CASE_DIR/case.json (written by dysink_deploy/plugins/harness.py) and the .npy
// inputs it names.
//
// case.json:
//   {"format": 1, "op": "RetrieveSinks", "node": "retrieve",
//    "attributes": {"sink_size": {"type": "INT", "value": 0}, "k": {"type": "INT", "value": 2},
//                   "plugin_namespace": {"type": "STRING", "value": "dysink"}, ...},
//    "inputs":  [{"name": "bank_feats", "file": "inputs/bank_feats.npy", "dtype": "float32"}, ...],
//    "outputs": [{"name": "slots", "dtype": "int64", "shape": [2]}, ...]}
// Attribute types are the ONNX AttributeProto names the node carries (FLOAT, INT, STRING); inputs
// are in the node's order; dtypes are the graph contract's names (float32, float16, bfloat16, int64,
// int32, bool). Members the harness does not use are ignored (the Python side keeps its rules there).
#pragma once

#include "npy.h"

#include "NvInferRuntime.h"

#include <string>
#include <vector>

namespace harness
{

struct DtypeInfo
{
    char const* name;   // the contract's name
    char const* descr;  // its .npy descriptor
    nvinfer1::DataType trt;
};

// The dtype called `name`, or nullptr.
DtypeInfo const* dtypeNamed(std::string const& name);
// The contract name of a TensorRT type ("INT8" style text for those the contract lacks).
std::string dtypeName(nvinfer1::DataType type);
size_t dtypeSize(nvinfer1::DataType type);

struct Attribute
{
    std::string name;
    std::string type;   // FLOAT, INT or STRING
    double number = 0;
    int64_t integer = 0;
    std::string text;
};

struct Tensor
{
    std::string name;
    DtypeInfo const* dtype = nullptr;
    std::vector<int64_t> shape;   // inputs: the .npy's; outputs: the contract's
    NpyArray array;               // inputs only
};

struct Case
{
    std::string op;
    std::string node;
    std::vector<Attribute> attributes;
    std::vector<Tensor> inputs;
    std::vector<Tensor> outputs;

    Attribute const* attribute(char const* name) const;
};

// Reads case.json and every input; false with `error` (one line) naming what is wrong.
bool loadCase(std::string const& dir, Case& out, std::string& error);

} // namespace harness
