"""A float32 twin of a bf16 ONNX model, for checking its numerics where bf16 kernels are missing."""

from __future__ import annotations


def fp32_twin(model_proto):
    """A float32 copy of a bf16 model, for checking its numerics where bf16 kernels are missing
    (ONNX Runtime CPU has none for MatMul, Softmax, Add...).

    Weights, constants and I/O become float32 (bf16 values are exact in fp32);
    every explicit Cast to bf16 becomes Cast(bf16) -> Cast(float32), so the
    graph still rounds where the bf16 model rounds on purpose (x0, sink K/V).
    Arithmetic runs in fp32: this checks the graph, not bf16 arithmetic error.
    The function bodies are dtype-polymorphic and need no change.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model_proto)
    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def fix_tensor(t):
        if t.data_type == bf16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name))

    def fix_graph(g):
        for t in g.initializer:
            fix_tensor(t)
        for v in list(g.input) + list(g.output) + list(g.value_info):
            if v.type.tensor_type.elem_type == bf16:
                v.type.tensor_type.elem_type = f32
        nodes = []
        for n in g.node:
            nodes.append(n)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    fix_tensor(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    fix_graph(a.g)
            if n.op_type == "Cast" and n.domain == "" and any(a.name == "to" and a.i == bf16 for a in n.attribute):
                rounded = n.output[0] + "__bf16"
                back = onnx.helper.make_node("Cast", [rounded], [n.output[0]], to=f32, name=n.name + "__to_fp32")
                n.output[0] = rounded
                nodes.append(back)
        del g.node[:]
        g.node.extend(nodes)

    fix_graph(m.graph)
    return m


__all__ = ["fp32_twin"]
