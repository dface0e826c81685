"""Reading Caffe net definitions: dialect detection and the V1 -> V2 upgrade.

``read_net(path_or_text)`` parses a ``.prototxt`` (text) or a binary NetParameter with the
dialect that reads it (BVLC first, then DeepLab, SegNet and DeconvNet: the first schema that
accepts every field and enum name of the file; for a binary file, the first that leaves no
field unknown), upgrades it to V2 (``layer {}`` with string
types) and returns a :class:`NetDefinition`: the V2 message, the dialect, and the line of each
layer in the file for error messages.

The upgrade is a chain of steps, each a function NetParameter -> NetParameter, as Caffe's
``upgrade_proto.cpp`` (V0 nets, Caffe's pre-2014 format, are not read):

1. ``v1_layers_to_v2``: every ``layers {}`` (V1: enum types, ``blobs_lr`` / ``weight_decay``,
   ``param`` names) becomes a ``layer {}`` (string types, ``param { lr_mult decay_mult name }``);
   each ``*_param`` is copied as it is. A file with both is an error, as in Caffe.
2. ``inputs_to_layer``: the net-level ``input`` + ``input_dim`` (four per input) or
   ``input_shape`` become one Input layer at the front.
"""

import os
import re

from convnet.errors import FileFormatError
from convnet.caffe import schema

from google.protobuf import message as _message
from google.protobuf import text_format

#: V1 enum name -> V2 type string (BVLC's, plus the forks' V1 layers)
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
    "UNPOOLING": "Unpooling", "BN": "BN", "IMAGE_SEG_DATA": "ImageSegData", "INTERP": "Interp",
    "MAT_READ": "MatRead", "MAT_WRITE": "MatWrite", "SEG_ACCURACY": "SegAccuracy",
}


class NetDefinition:
    """A parsed net: ``message`` (V2 NetParameter of ``dialect``), ``source`` (the path, or
    "<text>"), ``lines`` (layer index -> line in the file, 1-based; None when unknown),
    ``upgraded`` (whether it came in V1 form)."""

    def __init__(self, message, dialect, source, lines, upgraded):
        self.message = message
        self.dialect = dialect
        self.source = source
        self.lines = lines
        self.upgraded = upgraded

    def where(self, index):
        line = self.lines[index] if index < len(self.lines) else None
        return f"{self.source}:{line}" if line else self.source

    def to_text(self):
        """The V2 definition as prototxt text (``convnet convert`` writes it)."""
        return text_format.MessageToString(self.message)


def _read_source(path_or_text, what):
    """(text or bytes, display name) for a path, or a string that holds the text itself."""
    if isinstance(path_or_text, (bytes, bytearray)):
        return bytes(path_or_text), "<bytes>"
    text = str(path_or_text)
    if "{" in text or "\n" in text or ":" in text and not os.path.exists(text):
        return text, "<text>"
    if not os.path.exists(text):
        raise FileFormatError(f"{text}: no such {what} file")
    with open(text, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8"), text
    except UnicodeDecodeError:
        return data, text


def parse_message(data, cls_name, source, dialect=None):
    """Parse text or binary ``data`` as message ``cls_name`` with ``dialect`` (None: the first
    of schema.DIALECTS that reads it). Returns (message, dialect)."""
    dialects = [dialect] if dialect else list(schema.DIALECTS)
    errors = []
    partial = []
    for d in dialects:
        msg = schema.message_class(d, cls_name)()
        try:
            if isinstance(data, bytes):
                msg.ParseFromString(data)
                # a binary file reads under any schema; the fork's fields and enum values
                # stay unknown under the wrong one
                unknown = _unknown_count(msg)
                if unknown and len(dialects) > 1:
                    partial.append((unknown, msg, d))
                    continue
            else:
                text_format.Parse(data, msg)
            return msg, d
        except text_format.ParseError as exc:
            errors.append((exc.GetLine() or 0, d, str(exc)))
        except _message.DecodeError as exc:
            errors.append((0, d, str(exc)))
    if partial:
        _, msg, d = min(partial, key=lambda p: p[0])
        return msg, d
    # report the dialect that read furthest: its error is the one the file most likely has
    line, d, text = max(errors, key=lambda e: e[0])
    text = re.sub(r"^\d+:\d+ : ", "", text) + _expected(text, d)
    where = f"{source}:{line}" if line else source
    tried = ", ".join(dialects)
    raise FileFormatError(f"{where}: cannot read the {cls_name} ({text}) [tried the Caffe "
                          f"dialect(s) {tried}; the error is {d}'s]")


def _unknown_count(msg):
    """Unknown fields in ``msg`` and every submessage (a binary file read with a schema that
    is not its own)."""
    from google.protobuf import unknown_fields
    count = len(unknown_fields.UnknownFieldSet(msg))
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        for item in (value if field.is_repeated else [value]):
            count += _unknown_count(item)
    return count


def _expected(text, dialect):
    """What the schema has where the file names an unknown field or enum value."""
    import difflib
    if 'V1LayerParameter" has no field named "layer"' in text:
        return ("; this is Caffe's V0 format (layers { layer { ... } }), which convnet does "
                "not read: upgrade it with Caffe's upgrade_net_proto_text first")
    m = re.search(r'Message type "caffe\.(\w+)" has no field named "(\w+)"', text)
    if m:
        try:
            fields = list(schema.message_class(dialect, m.group(1)).DESCRIPTOR.fields_by_name)
        except KeyError:
            return ""
        close = difflib.get_close_matches(m.group(2), fields, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"; {hint}{m.group(1)} has: {', '.join(fields)}"
    m = re.search(r'Enum type "caffe\.([\w.]+)" has no value named (\w+)', text)
    if m:
        *owner, enum = m.group(1).split(".")
        try:
            desc = schema.message_class(dialect, owner[0]).DESCRIPTOR
            for name in owner[1:]:
                desc = desc.nested_types_by_name[name]
            values = [v.name for v in desc.enum_types_by_name[enum].values]
        except (KeyError, IndexError):
            return ""
        close = difflib.get_close_matches(m.group(2), values, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"; {hint}{enum} values: {', '.join(values)}"
    return ""


def _layer_lines(text):
    """Lines of the top-level ``layer {`` / ``layers {`` blocks, in order per field name."""
    out = {"layer": [], "layers": []}
    depth = 0
    line = 1
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            line += text.count("\n", i, j)
            i = j
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and text.startswith("layer", i) and (i == 0 or not (
                text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r"(layers?)\s*:?\s*\{", text[i:])
            if m:
                out[m.group(1)].append(line)
                line += m.group(0).count("\n")
                i += m.end()
                depth += 1
                continue
        i += 1
    return out


# ---------------------------------------------------------------------- upgrade steps
def inputs_to_layer(net, source):
    """Net-level input / input_dim / input_shape -> an Input layer first (Caffe's
    UpgradeNetInput)."""
    if not net.input:
        if net.input_dim or net.input_shape:
            raise FileFormatError(f"{source}: input_dim / input_shape given without input "
                                  f"names")
        return net
    names = list(net.input)
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise FileFormatError(f"{source}: {len(names)} input(s) {names} but "
                                  f"{len(net.input_shape)} input_shape entries (one per input)")
        shapes = [list(s.dim) for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise FileFormatError(f"{source}: {len(names)} input(s) {names} need "
                                  f"{4 * len(names)} input_dim values (four per input: num, "
                                  f"channels, height, width), got {len(net.input_dim)}")
        dims = list(net.input_dim)
        shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
    else:
        shapes = [None] * len(names)
    upgraded = type(net)()
    upgraded.CopyFrom(net)
    for field in ("input", "input_dim", "input_shape", "layer"):
        upgraded.ClearField(field)
    _fill_input_layer(upgraded.layer.add(), names, shapes)
    for lp in net.layer:
        upgraded.layer.add().CopyFrom(lp)
    return upgraded


def _fill_input_layer(layer, names, shapes):
    layer.name = "input"
    layer.type = "Input"
    layer.top.extend(names)
    if all(s is not None for s in shapes):
        for s in shapes:
            layer.input_param.shape.add().dim.extend(int(d) for d in s)


def v1_layers_to_v2(net, source):
    """V1 ``layers {}`` -> V2 ``layer {}`` (Caffe's UpgradeV1Net / UpgradeV1LayerParameter)."""
    if not net.layers:
        return net
    if net.layer:
        raise FileFormatError(f"{source}: the net has both V1 'layers' and V2 'layer' fields; "
                              f"use one format (Caffe refuses such a file too)")
    V2 = type(net)
    layer_cls = V2.DESCRIPTOR.fields_by_name["layer"].message_type
    v2_fields = set(layer_cls.fields_by_name)
    out = V2()
    out.CopyFrom(net)
    out.ClearField("layers")
    type_enum = net.layers[0].DESCRIPTOR.fields_by_name["type"].enum_type
    for v1 in net.layers:
        lp = out.layer.add()
        lp.name = v1.name
        lp.type = V1_TYPES.get(type_enum.values_by_number[v1.type].name,
                               type_enum.values_by_number[v1.type].name)
        lp.bottom.extend(v1.bottom)
        lp.top.extend(v1.top)
        for rule in v1.include:
            lp.include.add().CopyFrom(rule)
        for rule in v1.exclude:
            lp.exclude.add().CopyFrom(rule)
        lp.loss_weight.extend(v1.loss_weight)
        for blob in v1.blobs:
            lp.blobs.add().CopyFrom(blob)
        n_specs = max(len(v1.blobs_lr), len(v1.weight_decay), len(v1.param))
        for i in range(n_specs):
            spec = lp.param.add()
            if i < len(v1.param) and v1.param[i]:
                spec.name = v1.param[i]
            if i < len(v1.blobs_lr):
                spec.lr_mult = v1.blobs_lr[i]
            if i < len(v1.weight_decay):
                spec.decay_mult = v1.weight_decay[i]
        for field, value in v1.ListFields():
            if field.name.endswith("_param") and field.name in v2_fields and \
                    not field.is_repeated:
                getattr(lp, field.name).CopyFrom(value)
    return out


UPGRADE_STEPS = (v1_layers_to_v2, inputs_to_layer)


def read_net(path_or_text, dialect=None):
    """Parse a Caffe net definition (text or binary, V1 or V2) into a V2 NetDefinition."""
    data, source = _read_source(path_or_text, "net definition")
    message, found = parse_message(data, "NetParameter", source, dialect)
    v1 = bool(message.layers)
    if isinstance(data, str):
        found_lines = _layer_lines(data)
        lines = found_lines["layers"] if v1 else found_lines["layer"]
    else:
        lines = []
    for step in UPGRADE_STEPS:
        message = step(message, source)
    if message.layer and message.layer[0].type == "Input" and \
            len(lines) == len(message.layer) - 1:
        lines = [None] + list(lines)
    return NetDefinition(message, found, source, list(lines), v1)
