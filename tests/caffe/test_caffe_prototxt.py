"""Reading Caffe net definitions: dialects, the V1 -> V2 upgrade, phase rules, the mapping of
Caffe fields to layer parameters, and every bad-file case with its message."""

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("google.protobuf")

from convnet import Net, caffe, layers  # noqa: E402
from convnet.errors import ConfigError, FileFormatError, ShapeError  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture(name):
    return os.path.join(FIXTURES, name)


def load(text, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", caffe.CaffeLoadNote)
        return caffe.load_net(text, **kwargs)


@pytest.mark.parametrize("name,dialect,v1", [
    ("deconvnet_v1.prototxt", "deconvnet", True), ("fcn8s_v2.prototxt", "bvlc", False),
    ("deeplab_v2.prototxt", "deeplab", False), ("segnet.prototxt", "segnet", False)])
def test_dialect_is_found_from_the_file(name, dialect, v1):
    definition = caffe.read_net(fixture(name))
    assert definition.dialect == dialect
    assert definition.upgraded is v1
    assert not definition.message.layers          # upgraded to V2


def test_v1_upgrade_maps_types_multipliers_and_inputs():
    d = caffe.read_net(fixture("deconvnet_v1.prototxt"))
    first = d.message.layer[0]
    assert (first.type, list(first.top)) == ("Input", ["data"])
    assert list(first.input_param.shape[0].dim) == [1, 3, 64, 64]
    data = d.message.layer[1]
    assert (data.name, data.type, data.image_data_param.label_type) == ("data", "ImageSegData",
                                                                        2)
    assert data.transform_param.crop_size == 64 and data.include[0].phase == 0   # TRAIN
    conv = d.message.layer[2]
    assert (conv.name, conv.type) == ("conv1_1", "Convolution")
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    types = {lp.type for lp in d.message.layer}
    assert {"BN", "ReLU", "Pooling", "Unpooling", "Deconvolution"} <= types
    unpool = next(lp for lp in d.message.layer if lp.name == "unpool5")
    assert (unpool.unpooling_param.unpool_size, list(unpool.bottom)) == (4, ["fc6-deconv",
                                                                            "pool5_mask"])
    # the line of each layer in the file (for messages)
    with open(fixture("deconvnet_v1.prototxt")) as f:
        text = f.read().splitlines()
    assert "name: 'conv1_1'" in text[d.lines[2] - 1]
    assert d.lines[0] is None                        # the Input layer came from input_dim


def test_upgraded_text_reads_back_the_same():
    d = caffe.read_net(fixture("deconvnet_v1.prototxt"))
    again = caffe.read_net(d.to_text())
    assert again.dialect == "deconvnet" and not again.upgraded
    assert again.message == d.message


def test_input_shape_and_several_inputs():
    net = load('input: "a" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 2 dim: 3 }'
               ' layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }')
    assert net.caffe.input_shapes == {"a": (2, 3), "b": (2, 3)}
    out = net.forward(a=np.ones((2, 3)), b=np.ones((2, 3)))
    np.testing.assert_array_equal(out["s"], 2 * np.ones((2, 3)))


NET = """
name: "rules"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "x" top: "a" include { phase: TEST } }
layer { name: "not_test" type: "ReLU" bottom: "a" top: "b" exclude { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "a" top: "c" include { stage: "deploy" } }
layer { name: "leveled" type: "ReLU" bottom: "a" top: "d" include { min_level: 2 } }
"""


def test_include_and_exclude_rules():
    names = lambda net: [layer.name for layer in net.layers]  # noqa: E731
    assert names(load(NET, phase="TRAIN")) == ["train_only", "not_test"]
    assert names(load(NET)) == ["test_only"]
    assert names(load(NET, stages=("deploy",))) == ["test_only", "staged"]
    assert names(load(NET, level=3)) == ["test_only", "leveled"]
    assert load(NET, phase="TRAIN").layers[0].phase == "TRAIN"
    assert load(NET).layers[0].phase == "TEST"


def test_layer_parameters_map_to_convnet():
    net = load("""
input: "data" input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 11
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 stride: 2 pad_h: 1 pad_w: 0
    dilation: 2 group: 1 engine: CAFFE weight_filler { type: "xavier" variance_norm: AVERAGE } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }
layer { name: "gpool" type: "Pooling" bottom: "conv" top: "gpool"
  pooling_param { pool: MAX global_pooling: true } }
layer { name: "cat" type: "Concat" bottom: "pool" bottom: "pool" top: "cat"
  concat_param { axis: 1 } }
layer { name: "prod" type: "Eltwise" bottom: "pool" bottom: "pool" top: "prod"
  eltwise_param { operation: PROD } }
layer { name: "lrelu" type: "ReLU" bottom: "prod" top: "prod" relu_param { negative_slope: 0.1 } }
layer { name: "drop" type: "Dropout" bottom: "cat" top: "cat" dropout_param { dropout_ratio: 0.3 } }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" flatten_param { axis: 2 } }
layer { name: "sink" type: "Silence" bottom: "gpool" }
""")
    conv = net.layer("conv")
    assert (conv.kernel_size, conv.stride, conv.pad, conv.dilation) == ((3, 1), (2, 2), (1, 0),
                                                                       (2, 2))
    assert conv.weight_filler == {"type": "xavier", "variance_norm": "AVERAGE"}
    assert [(p.lr_mult, p.decay_mult) for p in conv.params] == [(1, 1), (2, 0)]
    pool = net.layer("pool")
    assert (pool.pool, pool.kernel_size, pool.round_mode) == ("AVE", (3, 3), "FLOOR")
    assert net.layer("gpool").global_pooling
    assert net.layer("prod").operation == "PROD"
    assert net.layer("lrelu").negative_slope == pytest.approx(0.1)
    assert net.layer("drop").dropout_ratio == pytest.approx(0.3)
    assert net.outputs == ["prod", "flat"]
    out = net.forward(data=np.random.default_rng(0).standard_normal((1, 3, 9, 11)))
    # Caffe: conv (9 + 2 - 5) / 2 + 1 = 4 by (11 - 1) / 2 + 1 = 6; AVE pool floor: 2 x 3
    assert net.blobs["conv"].shape == (1, 4, 4, 6)
    assert out["flat"].shape == (1, 8, 6)


def test_v1_concat_dim_and_deconvnet_bn():
    net = load("""
input: "x" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4
layers { name: "cat" type: CONCAT bottom: "x" bottom: "x" top: "cat"
  concat_param { concat_dim: 1 } }
layers { name: "bn" type: BN bottom: "cat" top: "cat" blobs_lr: 1 blobs_lr: 1
  weight_decay: 0 weight_decay: 0
  bn_param { bn_mode: INFERENCE scale_filler { type: "constant" value: 2 }
             shift_filler { type: "constant" value: 0.5 } } }
""")
    bn = net.layer("bn")
    assert bn.type_name == "BatchNorm" and bn.affine and bn.use_global_stats is True
    assert [(p.lr_mult, p.decay_mult) for p in bn.params] == [(1, 0), (1, 0)]
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    out = net.forward(x=x)
    # INFERENCE with the stored statistics (mean 0, variance 1): y = scale * x + shift
    np.testing.assert_allclose(out[net.outputs[0]], 2 * np.concatenate([x, x], 1) + 0.5,
                               rtol=1e-6, atol=1e-6)
    assert net.caffe.aliases == {} and bn.in_place          # BatchNorm runs in place


def test_batchnorm_and_scale_pairs_fold():
    text = """
input: "x" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" batch_norm_param { eps: 0.001 }
  param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" param { lr_mult: 3 decay_mult: 0 }
  param { lr_mult: 4 decay_mult: 0 } scale_param { bias_term: true filler { value: 2 } } }
layer { name: "bn2" type: "BatchNorm" bottom: "bn" top: "bn2" }
layer { name: "scale2" type: "Scale" bottom: "bn2" top: "out" scale_param { bias_term: false } }
"""
    net = load(text)
    assert [layer.name for layer in net.layers] == ["bn", "bn2"]
    bn, bn2 = net.layers
    assert bn.affine and bn.eps == pytest.approx(1e-3)
    assert [(p.lr_mult, p.decay_mult) for p in bn.params] == [(3, 0), (4, 0)]
    np.testing.assert_array_equal(bn.params[0].data, 2 * np.ones(3))
    assert [(p.lr_mult, p.decay_mult) for p in bn2.params] == [(1, 1), (0, 0)]   # no bias
    assert net.caffe.folded == {"bn": "scale", "bn2": "scale2"}
    assert net.outputs == ["out"]
    unpaired = load("""input: "x" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" }""")
    assert not unpaired.layers[0].affine and unpaired.layers[0].use_global_stats is None


def test_propagate_down_false_gives_no_diff():
    net = load("""
input: "a" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3
input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3
layer { name: "conv" type: "Convolution" bottom: "b" top: "cb"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "cb" top: "s" propagate_down: true
  propagate_down: false }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "a" top: "loss" loss_weight: 2 }
""")
    assert net.layer("loss").loss_weight == 2
    net.force_backward = True
    net.forward(a=np.ones((1, 2, 3, 3)), b=np.ones((1, 2, 3, 3)))
    net.backward()
    assert "cb" not in net.diffs and "a" in net.diffs
    assert not np.any(net.layer("conv").weight.diff)


def test_dataset_layers_become_inputs_and_output_layers_are_left_out():
    with pytest.warns(caffe.CaffeLoadNote) as notes:
        net = caffe.load_net(fixture("deeplab_v2.prototxt"), phase="TRAIN")
    messages = [str(n.message) for n in notes]
    assert any("ImageSegData layer 'data' reads a dataset: its tops ['data', 'label'] become "
               "net inputs" in m for m in messages)
    assert any("SegAccuracy layer 'accuracy'" in m and "left out" in m for m in messages)
    assert len(messages) == 2
    assert net.inputs == ["data", "label"]
    assert net.caffe.data_layers[0]["batch_size"] == 2
    assert net.caffe.input_shapes == {"data": (2, 3, 41, 41), "label": (2, 1, 41, 41)}
    assert net.caffe.left_out == [("accuracy", "SegAccuracy", "writes files or reports a metric")]


def test_deeplab_v1_layers_and_hole():
    net = load("""
name: "deeplab_largefov_v1"
layers { name: "data" type: IMAGE_SEG_DATA top: "data" top: "label" top: "data_dim"
  image_data_param { source: "train.txt" batch_size: 2 label_type: PIXEL }
  transform_param { crop_size: 17 mirror: true } }
layers { name: "fc6" type: CONVOLUTION bottom: "data" top: "fc6"
  convolution_param { num_output: 4 kernel_size: 3 pad: 12 hole: 12 } }
layers { name: "shrink" type: INTERP bottom: "label" top: "label_shrink"
  interp_param { shrink_factor: 8 } }
layers { name: "acc" type: SEG_ACCURACY bottom: "fc6" bottom: "label_shrink" top: "acc"
  seg_accuracy_param { ignore_label: 255 } }
layers { name: "mat" type: MAT_WRITE bottom: "fc6" mat_write_param { prefix: "out/" } }
layers { name: "sink" type: SILENCE bottom: "data_dim" bottom: "label_shrink" }
""")
    assert net.caffe.dialect == "deeplab"
    assert net.layer("fc6").dilation == (12, 12)
    assert net.layer("shrink").shrink_factor == 8
    assert net.caffe.input_shapes["data_dim"] == (2, 1, 1, 2)
    assert [x[0] for x in net.caffe.left_out] == ["acc", "mat"]
    assert net.layer("fc6").top_shapes == [(2, 4, 17, 17)]            # set up from the crop


def test_input_shapes_argument():
    net = load(fixture("segnet.prototxt"), phase="TRAIN",
               input_shapes={"data": (1, 3, 32, 40), "label": (1, 1, 32, 40)})
    assert net.layer("conv_classifier").top_shapes == [(1, 5, 32, 40)]
    with pytest.raises(ConfigError, match="input_shapes names 'image'.*inputs: data, label"):
        load(fixture("segnet.prototxt"), phase="TRAIN", input_shapes={"image": (1, 3, 8, 8)})


def test_memory_and_dummy_data_give_shapes():
    net = load("""
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 3 height: 5 width: 6 } }
layer { name: "dummy" type: "DummyData" top: "extra"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 5 dim: 6 } } }
layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "extra" top: "s" }
layer { name: "sink" type: "Silence" bottom: "label" }
""")
    assert net.caffe.input_shapes == {"data": (2, 3, 5, 6), "label": (2, 1, 1, 1),
                                      "extra": (2, 3, 5, 6)}
    assert net.layer("sum").bottom_shapes == ((2, 3, 5, 6), (2, 3, 5, 6))   # set up


# ---------------------------------------------------------------------- bad files
def error(text, exc=ConfigError, **kwargs):
    with pytest.raises(exc) as info:
        load(text, **kwargs)
    return str(info.value)


def test_unsupported_layer_type_names_layer_type_line_and_supported_types():
    msg = error('input: "x" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2\n'
                'layer { name: "ok" type: "ReLU" bottom: "x" top: "x" }\n'
                'layer { name: "norm" type: "LRN" bottom: "x" top: "y" }\n')
    assert "<text>:3: layer 'norm' (type LRN)" in msg
    assert "not supported" in msg and "Convolution" in msg and "Deconvolution" in msg


def test_unknown_field_names_the_line():
    msg = error('layer { name: "c" type: "Convolution"\n'
                '  convolution_param { num_outputs: 3 } }', FileFormatError)
    assert "<text>:2" in msg and "num_outputs" in msg and "bvlc" in msg
    assert "did you mean 'num_output'?" in msg and "ConvolutionParameter has: num_output, " in msg


def test_unknown_v1_type_in_every_dialect():
    msg = error('layers { name: "c" type: CONVOLUTON }', FileFormatError)
    assert "CONVOLUTON" in msg and "deconvnet" in msg
    assert "did you mean CONVOLUTION?" in msg and "LayerType values: NONE, " in msg


def test_v0_format_is_named():
    msg = error('layers { layer { name: "conv1" type: "conv" num_output: 2 } }',
                FileFormatError)
    assert "V0 format" in msg and "upgrade_net_proto_text" in msg


def test_v1_and_v2_together_is_an_error():
    msg = error('layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\n'
                'layers { name: "b" type: RELU bottom: "x" top: "z" }', FileFormatError)
    assert "both V1 'layers' and V2 'layer'" in msg


def test_bad_input_dim_count():
    msg = error('input: "x" input_dim: 1 input_dim: 3 input_dim: 4\n'
                'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }', FileFormatError)
    assert "need 4 input_dim values" in msg and "got 3" in msg


def test_bad_value_names_layer_line_and_parameter():
    msg = error('input: "x" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n'
                'layer { name: "c" type: "Convolution" bottom: "x" top: "y"\n'
                '  convolution_param { num_output: 2 kernel_size: 0 } }')
    assert "<text>:2: layer 'c' (type Convolution)" in msg and "kernel_size" in msg
    assert ">= 1" in msg and "got 0" in msg


@pytest.mark.parametrize("body,words", [
    ('type: "Convolution" convolution_param { kernel_size: 3 }', ["num_output is required"]),
    ('type: "Convolution" convolution_param { num_output: 2 }', ["kernel_size", "required"]),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
     'weight_filler { type: "positive_unitball" } }', ["weight_filler", "positive_unitball"]),
    ('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 }', ["STOCHASTIC"]),
    ('type: "Pooling" pooling_param { kernel_size: 2 kernel_h: 2 kernel_w: 2 }',
     ["either kernel_size or kernel_h"]),
    ('type: "ReLU" loss_weight: 1', ["loss_weight", "not a loss"]),
    ('type: "Dropout" dropout_param { scale_train: false }', ["scale_train"]),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 kernel_size: 3 '
     'kernel_size: 3 }', ["3 values", "2-d"]),
])
def test_bad_layer_fields(body, words):
    msg = error('input: "x" input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6\n'
                f'layer {{ name: "bad" bottom: "x" top: "y" {body} }}')
    assert "<text>:2: layer 'bad'" in msg
    for word in words:
        assert word in msg


def test_shape_errors_at_setup_name_the_layer_line():
    msg = error('input: "x" input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6\n'
                'input: "y" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                'layer { name: "ok" type: "ReLU" bottom: "x" top: "a" }\n'
                'layer { name: "crop" type: "Crop" bottom: "a" bottom: "y" top: "c" }\n',
                ShapeError)
    assert msg.startswith("<text>:4: setting the net up") and "Crop 'crop'" in msg


def test_weight_sharing_is_refused():
    conv = ('layer {{ name: "{0}" type: "Convolution" bottom: "x" top: "{0}" param {{ name: "w" }}'
            ' convolution_param {{ num_output: 2 kernel_size: 1 }} }}\n')
    msg = error('input: "x" input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6\n' +
                conv.format("c1") + conv.format("c2"))
    assert "<text>:3: layer 'c2'" in msg and "weight sharing" in msg and "'c1'" in msg


def test_wiring_errors_name_the_layer():
    msg = error('input: "x" input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6\n'
                'layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\n'
                'layer { name: "b" type: "ReLU" bottom: "x" top: "y" }\n')
    assert "<text>:3: layer 'b' (type ReLU)" in msg and "already" in msg


def test_unknown_bottom_names_the_blob():
    msg = error('input: "data" input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6\n'
                'layer { name: "pool1" type: "Pooling" bottom: "data" top: "pool1"\n'
                '  pooling_param { kernel_size: 2 stride: 2 } }\n'
                'layer { name: "conv2" type: "Convolution" bottom: "poool1" top: "conv2"\n'
                '  convolution_param { num_output: 2 kernel_size: 1 } }\n')
    assert "<text>:4: layer 'conv2'" in msg and "unknown bottom blob 'poool1'" in msg
    assert "did you mean 'pool1'" in msg


def test_missing_file_and_not_a_net():
    with pytest.raises(FileFormatError, match="no such net definition file"):
        caffe.load_net("/nonexistent/deploy.prototxt")
    with pytest.raises(FileFormatError, match="no layer of the net is included"):
        load('layer { name: "r" type: "ReLU" bottom: "x" top: "y" include { phase: TRAIN } }')


def test_net_from_prototxt():
    net = Net.from_prototxt(fixture("fcn8s_v2.prototxt"))
    assert isinstance(net, Net) and net.outputs == ["score"]


def test_binary_definitions_find_their_dialect():
    from convnet.caffe import schema
    for name, dialect in (("deconvnet_v1.prototxt", "deconvnet"),
                          ("segnet.prototxt", "segnet"), ("deeplab_v2.prototxt", "deeplab")):
        text = caffe.read_net(fixture(name))
        data = text.message.SerializeToString()
        binary = caffe.read_net(data)
        assert binary.dialect == dialect
        assert binary.message == text.message
    plain = schema.message_class("bvlc", "NetParameter")(name="n")
    assert caffe.read_net(plain.SerializeToString()).dialect == "bvlc"
