"""Caffe's message schemas, one per dialect, built at run time with ``descriptor_pb2``.

Caffe and its forks describe nets in ``caffe.proto``; the forks add layers at field numbers
that BVLC later gave to other fields (SegNet's ``upsample_param`` = 137 is BVLC's
``embed_param``; DeepLab's ``interp_param`` = 143 is BVLC's ``input_param``), so one schema
cannot read them all. Each dialect here is BVLC's schema (the subset convnet reads: every
field of the layers it supports and of the common data, loss and solver messages) plus the
fork's own messages and fields, written below in ``.proto`` syntax and compiled by the small
reader in this module (no protoc needed). Only field *names* matter for text files; the
numbers matter for binary files, and the fork numbers that are not documented are marked.

``message_class(dialect, "NetParameter")`` returns the generated class.
"""

import re

from convnet.errors import ConfigError

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError as exc:      # pragma: no cover - exercised by the import test
    raise ImportError("convnet.caffe needs the protobuf package: pip install \".[caffe]\" "
                      f"(or pip install protobuf) ({exc})") from exc

DIALECTS = ("bvlc", "deeplab", "segnet", "deconvnet")

# BVLC caffe.proto (the parts convnet reads), with Caffe's field numbers and defaults.
_BVLC = """
enum Phase { TRAIN = 0; TEST = 1; }

message BlobShape { repeated int64 dim = 1 [packed = true]; }

message BlobProto {
  optional BlobShape shape = 7;
  repeated float data = 5 [packed = true];
  repeated float diff = 6 [packed = true];
  repeated double double_data = 8 [packed = true];
  repeated double double_diff = 9 [packed = true];
  optional int32 num = 1 [default = 0];
  optional int32 channels = 2 [default = 0];
  optional int32 height = 3 [default = 0];
  optional int32 width = 4 [default = 0];
}

message BlobProtoVector { repeated BlobProto blobs = 1; }

message FillerParameter {
  optional string type = 1 [default = "constant"];
  optional float value = 2 [default = 0];
  optional float min = 3 [default = 0];
  optional float max = 4 [default = 1];
  optional float mean = 5 [default = 0];
  optional float std = 6 [default = 1];
  optional int32 sparse = 7 [default = -1];
  enum VarianceNorm { FAN_IN = 0; FAN_OUT = 1; AVERAGE = 2; }
  optional VarianceNorm variance_norm = 8 [default = FAN_IN];
}

message NetState {
  optional Phase phase = 1 [default = TEST];
  optional int32 level = 2 [default = 0];
  repeated string stage = 3;
}

message NetStateRule {
  optional Phase phase = 1;
  optional int32 min_level = 2;
  optional int32 max_level = 3;
  repeated string stage = 4;
  repeated string not_stage = 5;
}

message NetParameter {
  optional string name = 1;
  repeated string input = 3;
  repeated BlobShape input_shape = 8;
  repeated int32 input_dim = 4;
  optional bool force_backward = 5 [default = false];
  optional NetState state = 6;
  optional bool debug_info = 7 [default = false];
  repeated LayerParameter layer = 100;
  repeated V1LayerParameter layers = 2;
}

message SolverParameter {
  optional string net = 24;
  optional NetParameter net_param = 25;
  optional string train_net = 1;
  repeated string test_net = 2;
  optional NetParameter train_net_param = 21;
  repeated NetParameter test_net_param = 22;
  optional NetState train_state = 26;
  repeated NetState test_state = 27;
  repeated int32 test_iter = 3;
  optional int32 test_interval = 4 [default = 0];
  optional bool test_compute_loss = 19 [default = false];
  optional bool test_initialization = 32 [default = true];
  optional float base_lr = 5;
  optional int32 display = 6;
  optional int32 average_loss = 33 [default = 1];
  optional int32 max_iter = 7;
  optional int32 iter_size = 36 [default = 1];
  optional string lr_policy = 8;
  optional float gamma = 9;
  optional float power = 10;
  optional float momentum = 11;
  optional float weight_decay = 12;
  optional string regularization_type = 29 [default = "L2"];
  optional int32 stepsize = 13;
  repeated int32 stepvalue = 34;
  optional float clip_gradients = 35 [default = -1];
  optional int32 snapshot = 14 [default = 0];
  optional string snapshot_prefix = 15;
  optional bool snapshot_diff = 16 [default = false];
  enum SnapshotFormat { HDF5 = 0; BINARYPROTO = 1; }
  optional SnapshotFormat snapshot_format = 37 [default = BINARYPROTO];
  enum SolverMode { CPU = 0; GPU = 1; }
  optional SolverMode solver_mode = 17 [default = GPU];
  optional int32 device_id = 18 [default = 0];
  optional int64 random_seed = 20 [default = -1];
  optional string type = 40 [default = "SGD"];
  optional float delta = 31 [default = 1e-8];
  optional float momentum2 = 39 [default = 0.999];
  optional float rms_decay = 38 [default = 0.99];
  optional bool debug_info = 23 [default = false];
  optional bool snapshot_after_train = 28 [default = true];
  enum SolverType { SGD = 0; NESTEROV = 1; ADAGRAD = 2; RMSPROP = 3; ADADELTA = 4; ADAM = 5; }
  optional SolverType solver_type = 30 [default = SGD];
  optional bool layer_wise_reduce = 41 [default = true];
  repeated string weights = 42;
}

message ParamSpec {
  optional string name = 1;
  enum DimCheckMode { STRICT = 0; PERMISSIVE = 1; }
  optional DimCheckMode share_mode = 2;
  optional float lr_mult = 3 [default = 1.0];
  optional float decay_mult = 4 [default = 1.0];
}

message LayerParameter {
  optional string name = 1;
  optional string type = 2;
  repeated string bottom = 3;
  repeated string top = 4;
  optional Phase phase = 10;
  repeated float loss_weight = 5;
  repeated ParamSpec param = 6;
  repeated BlobProto blobs = 7;
  repeated bool propagate_down = 11;
  repeated NetStateRule include = 8;
  repeated NetStateRule exclude = 9;
  optional TransformationParameter transform_param = 100;
  optional LossParameter loss_param = 101;
  optional AccuracyParameter accuracy_param = 102;
  optional ArgMaxParameter argmax_param = 103;
  optional BatchNormParameter batch_norm_param = 139;
  optional BiasParameter bias_param = 141;
  optional ConcatParameter concat_param = 104;
  optional ConvolutionParameter convolution_param = 106;
  optional CropParameter crop_param = 144;
  optional DataParameter data_param = 107;
  optional DropoutParameter dropout_param = 108;
  optional DummyDataParameter dummy_data_param = 109;
  optional EltwiseParameter eltwise_param = 110;
  optional ELUParameter elu_param = 140;
  optional EmbedParameter embed_param = 137;
  optional FlattenParameter flatten_param = 135;
  optional HDF5DataParameter hdf5_data_param = 112;
  optional HDF5OutputParameter hdf5_output_param = 113;
  optional ImageDataParameter image_data_param = 115;
  optional InnerProductParameter inner_product_param = 117;
  optional InputParameter input_param = 143;
  optional LRNParameter lrn_param = 118;
  optional MemoryDataParameter memory_data_param = 119;
  optional PoolingParameter pooling_param = 121;
  optional PowerParameter power_param = 122;
  optional PReLUParameter prelu_param = 131;
  optional PythonParameter python_param = 130;
  optional ReLUParameter relu_param = 123;
  optional ReshapeParameter reshape_param = 133;
  optional ScaleParameter scale_param = 142;
  optional SigmoidParameter sigmoid_param = 124;
  optional SoftmaxParameter softmax_param = 125;
  optional SliceParameter slice_param = 126;
  optional TanHParameter tanh_param = 127;
  optional ThresholdParameter threshold_param = 128;
  optional WindowDataParameter window_data_param = 129;
}

message TransformationParameter {
  optional float scale = 1 [default = 1];
  optional bool mirror = 2 [default = false];
  optional uint32 crop_size = 3 [default = 0];
  optional string mean_file = 4;
  repeated float mean_value = 5;
  optional bool force_color = 6 [default = false];
  optional bool force_gray = 7 [default = false];
}

message LossParameter {
  optional int32 ignore_label = 1;
  enum NormalizationMode { FULL = 0; VALID = 1; BATCH_SIZE = 2; NONE = 3; }
  optional NormalizationMode normalization = 3 [default = VALID];
  optional bool normalize = 2;
}

message AccuracyParameter {
  optional uint32 top_k = 1 [default = 1];
  optional int32 axis = 2 [default = 1];
  optional int32 ignore_label = 3;
}

message ArgMaxParameter {
  optional bool out_max_val = 1 [default = false];
  optional uint32 top_k = 2 [default = 1];
  optional int32 axis = 3;
}

message ConcatParameter {
  optional int32 axis = 2 [default = 1];
  optional uint32 concat_dim = 1 [default = 1];
}

message BatchNormParameter {
  optional bool use_global_stats = 1;
  optional float moving_average_fraction = 2 [default = 0.999];
  optional float eps = 3 [default = 1e-5];
}

message BiasParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 num_axes = 2 [default = 1];
  optional FillerParameter filler = 3;
}

message ConvolutionParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  repeated uint32 pad = 3;
  repeated uint32 kernel_size = 4;
  repeated uint32 stride = 6;
  repeated uint32 dilation = 18;
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_h = 11;
  optional uint32 kernel_w = 12;
  optional uint32 stride_h = 13;
  optional uint32 stride_w = 14;
  optional uint32 group = 5 [default = 1];
  optional FillerParameter weight_filler = 7;
  optional FillerParameter bias_filler = 8;
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 15 [default = DEFAULT];
  optional int32 axis = 16 [default = 1];
  optional bool force_nd_im2col = 17 [default = false];
}

message CropParameter {
  optional int32 axis = 1 [default = 2];
  repeated uint32 offset = 2;
}

message DataParameter {
  enum DB { LEVELDB = 0; LMDB = 1; }
  optional string source = 1;
  optional uint32 batch_size = 4;
  optional uint32 rand_skip = 7 [default = 0];
  optional DB backend = 8 [default = LEVELDB];
  optional float scale = 2 [default = 1];
  optional string mean_file = 3;
  optional uint32 crop_size = 5 [default = 0];
  optional bool mirror = 6 [default = false];
  optional bool force_encoded_color = 9 [default = false];
  optional uint32 prefetch = 10 [default = 4];
}

message DropoutParameter {
  optional float dropout_ratio = 1 [default = 0.5];
  optional bool scale_train = 2 [default = true];
}

message DummyDataParameter {
  repeated FillerParameter data_filler = 1;
  repeated BlobShape shape = 6;
  repeated uint32 num = 2;
  repeated uint32 channels = 3;
  repeated uint32 height = 4;
  repeated uint32 width = 5;
}

message EltwiseParameter {
  enum EltwiseOp { PROD = 0; SUM = 1; MAX = 2; }
  optional EltwiseOp operation = 1 [default = SUM];
  repeated float coeff = 2;
  optional bool stable_prod_grad = 3 [default = true];
}

message ELUParameter { optional float alpha = 1 [default = 1]; }

message EmbedParameter {
  optional uint32 num_output = 1;
  optional uint32 input_dim = 2;
  optional bool bias_term = 3 [default = true];
  optional FillerParameter weight_filler = 4;
  optional FillerParameter bias_filler = 5;
}

message FlattenParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 end_axis = 2 [default = -1];
}

message HDF5DataParameter {
  optional string source = 1;
  optional uint32 batch_size = 2;
  optional bool shuffle = 3 [default = false];
}

message HDF5OutputParameter { optional string file_name = 1; }

message ImageDataParameter {
  optional string source = 1;
  optional uint32 batch_size = 4 [default = 1];
  optional uint32 rand_skip = 7 [default = 0];
  optional bool shuffle = 8 [default = false];
  optional uint32 new_height = 9 [default = 0];
  optional uint32 new_width = 10 [default = 0];
  optional bool is_color = 11 [default = true];
  optional float scale = 2 [default = 1];
  optional string mean_file = 3;
  optional uint32 crop_size = 5 [default = 0];
  optional bool mirror = 6 [default = false];
  optional string root_folder = 12 [default = ""];
}

message InnerProductParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  optional FillerParameter weight_filler = 3;
  optional FillerParameter bias_filler = 4;
  optional int32 axis = 5 [default = 1];
  optional bool transpose = 6 [default = false];
}

message InputParameter { repeated BlobShape shape = 1; }

message LRNParameter {
  optional uint32 local_size = 1 [default = 5];
  optional float alpha = 2 [default = 1];
  optional float beta = 3 [default = 0.75];
  enum NormRegion { ACROSS_CHANNELS = 0; WITHIN_CHANNEL = 1; }
  optional NormRegion norm_region = 4 [default = ACROSS_CHANNELS];
  optional float k = 5 [default = 1];
}

message MemoryDataParameter {
  optional uint32 batch_size = 1;
  optional uint32 channels = 2;
  optional uint32 height = 3;
  optional uint32 width = 4;
}

message PoolingParameter {
  enum PoolMethod { MAX = 0; AVE = 1; STOCHASTIC = 2; }
  optional PoolMethod pool = 1 [default = MAX];
  optional uint32 pad = 4 [default = 0];
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_size = 2;
  optional uint32 kernel_h = 5;
  optional uint32 kernel_w = 6;
  optional uint32 stride = 3 [default = 1];
  optional uint32 stride_h = 7;
  optional uint32 stride_w = 8;
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 11 [default = DEFAULT];
  optional bool global_pooling = 12 [default = false];
  enum RoundMode { CEIL = 0; FLOOR = 1; }
  optional RoundMode round_mode = 13 [default = CEIL];
}

message PowerParameter {
  optional float power = 1 [default = 1.0];
  optional float scale = 2 [default = 1.0];
  optional float shift = 3 [default = 0.0];
}

message PReLUParameter {
  optional FillerParameter filler = 1;
  optional bool channel_shared = 2 [default = false];
}

message PythonParameter {
  optional string module = 1;
  optional string layer = 2;
  optional string param_str = 3 [default = ""];
  optional bool share_in_parallel = 4 [default = false];
}

message ReLUParameter {
  optional float negative_slope = 1 [default = 0];
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 2 [default = DEFAULT];
}

message ReshapeParameter {
  optional BlobShape shape = 1;
  optional int32 axis = 2 [default = 0];
  optional int32 num_axes = 3 [default = -1];
}

message ScaleParameter {
  optional int32 axis = 1 [default = 1];
  optional int32 num_axes = 2 [default = 1];
  optional FillerParameter filler = 3;
  optional bool bias_term = 4 [default = false];
  optional FillerParameter bias_filler = 5;
}

message SigmoidParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
}

message SliceParameter {
  optional int32 axis = 3 [default = 1];
  repeated uint32 slice_point = 2;
  optional uint32 slice_dim = 1 [default = 1];
}

message SoftmaxParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
  optional int32 axis = 2 [default = 1];
}

message TanHParameter {
  enum Engine { DEFAULT = 0; CAFFE = 1; CUDNN = 2; }
  optional Engine engine = 1 [default = DEFAULT];
}

message ThresholdParameter { optional float threshold = 1 [default = 0]; }

message WindowDataParameter {
  optional string source = 1;
  optional float scale = 2 [default = 1];
  optional string mean_file = 3;
  optional uint32 batch_size = 4;
  optional uint32 crop_size = 5 [default = 0];
  optional bool mirror = 6 [default = false];
  optional float fg_threshold = 7 [default = 0.5];
  optional float bg_threshold = 8 [default = 0.5];
  optional float fg_fraction = 9 [default = 0.25];
  optional uint32 context_pad = 10 [default = 0];
  optional string crop_mode = 11 [default = "warp"];
  optional bool cache_images = 12 [default = false];
  optional string root_folder = 13 [default = ""];
}

message V1LayerParameter {
  repeated string bottom = 2;
  repeated string top = 3;
  optional string name = 4;
  repeated NetStateRule include = 32;
  repeated NetStateRule exclude = 33;
  enum LayerType {
    NONE = 0; ABSVAL = 35; ACCURACY = 1; ARGMAX = 30; BNLL = 2; CONCAT = 3;
    CONTRASTIVE_LOSS = 37; CONVOLUTION = 4; DATA = 5; DECONVOLUTION = 39; DROPOUT = 6;
    DUMMY_DATA = 32; EUCLIDEAN_LOSS = 7; ELTWISE = 25; EXP = 38; FLATTEN = 8;
    HDF5_DATA = 9; HDF5_OUTPUT = 10; HINGE_LOSS = 28; IM2COL = 11; IMAGE_DATA = 12;
    INFOGAIN_LOSS = 13; INNER_PRODUCT = 14; LRN = 15; MEMORY_DATA = 29;
    MULTINOMIAL_LOGISTIC_LOSS = 16; MVN = 34; POOLING = 17; POWER = 26; RELU = 18;
    SIGMOID = 19; SIGMOID_CROSS_ENTROPY_LOSS = 27; SILENCE = 36; SOFTMAX = 20;
    SOFTMAX_LOSS = 21; SPLIT = 22; SLICE = 33; TANH = 23; WINDOW_DATA = 24; THRESHOLD = 31;
  }
  optional LayerType type = 5;
  repeated BlobProto blobs = 6;
  repeated string param = 1001;
  enum DimCheckMode { STRICT = 0; PERMISSIVE = 1; }
  repeated DimCheckMode blob_share_mode = 1002;
  repeated float blobs_lr = 7;
  repeated float weight_decay = 8;
  repeated float loss_weight = 35;
  optional AccuracyParameter accuracy_param = 27;
  optional ArgMaxParameter argmax_param = 23;
  optional ConcatParameter concat_param = 9;
  optional ConvolutionParameter convolution_param = 10;
  optional DataParameter data_param = 11;
  optional DropoutParameter dropout_param = 12;
  optional DummyDataParameter dummy_data_param = 26;
  optional EltwiseParameter eltwise_param = 24;
  optional HDF5DataParameter hdf5_data_param = 13;
  optional HDF5OutputParameter hdf5_output_param = 14;
  optional ImageDataParameter image_data_param = 15;
  optional InnerProductParameter inner_product_param = 17;
  optional LRNParameter lrn_param = 18;
  optional MemoryDataParameter memory_data_param = 22;
  optional PoolingParameter pooling_param = 19;
  optional PowerParameter power_param = 21;
  optional ReLUParameter relu_param = 30;
  optional SigmoidParameter sigmoid_param = 38;
  optional SoftmaxParameter softmax_param = 39;
  optional SliceParameter slice_param = 31;
  optional TanHParameter tanh_param = 37;
  optional ThresholdParameter threshold_param = 25;
  optional WindowDataParameter window_data_param = 20;
  optional TransformationParameter transform_param = 36;
  optional LossParameter loss_param = 42;
}
"""

# The forks' additions. A message named again is merged into BVLC's (fields added, a field
# with the same number replaced); "drop NAME;" removes a BVLC field the fork numbers otherwise.
# Field numbers >= 5000 are convnet's own: the fork's number is undocumented or it has none
# (the V2 form of a V1-only fork's layers); only names matter for text files.
# DeepLab's segmentation data layer and its V1 names (DeepLab v1 and DeconvNet were V1 nets)
_SEG_DATA = """
message ImageDataParameter {
  enum LabelType { NONE = 0; IMAGE = 1; PIXEL = 2; }
  optional LabelType label_type = 5104 [default = IMAGE];
  optional int32 ignore_label = 5105 [default = 255];
}
message V1LayerParameter {
  enum LayerType { IMAGE_SEG_DATA = 5200; }
}
"""

_FORKS = {
    # DeepLab v2 (deeplab-public-ver2): Interp, ImageSegData, MatRead/MatWrite, SegAccuracy
    "deeplab": """
message LayerParameter {
  drop input_param;
  optional InterpParameter interp_param = 143;
  optional InputParameter input_param = 5100;
  optional MatReadParameter mat_read_param = 5101;
  optional MatWriteParameter mat_write_param = 5102;
  optional SegAccuracyParameter seg_accuracy_param = 5103;
}
message InterpParameter {
  optional int32 height = 1 [default = 0];
  optional int32 width = 2 [default = 0];
  optional int32 zoom_factor = 3 [default = 1];
  optional int32 shrink_factor = 4 [default = 1];
  optional int32 pad_beg = 5 [default = 0];
  optional int32 pad_end = 6 [default = 0];
}
message V1LayerParameter {
  enum LayerType { INTERP = 5201; MAT_READ = 5202; MAT_WRITE = 5203; SEG_ACCURACY = 5204; }
  optional InterpParameter interp_param = 5205;
  optional MatReadParameter mat_read_param = 5206;
  optional MatWriteParameter mat_write_param = 5207;
  optional SegAccuracyParameter seg_accuracy_param = 5208;
}
message ConvolutionParameter {
  optional uint32 hole = 5209;
  optional uint32 hole_h = 5210;
  optional uint32 hole_w = 5211;
}
message MatReadParameter {
  optional string prefix = 1;
  optional string source = 2;
  optional int32 strip = 3 [default = 0];
  optional int32 batch_size = 4 [default = 1];
}
message MatWriteParameter {
  optional string prefix = 1;
  optional string source = 2;
  optional int32 strip = 3 [default = 0];
  optional int32 period = 4 [default = 1];
}
message SegAccuracyParameter { repeated int32 ignore_label = 1; }
""" + _SEG_DATA,
    # SegNet (caffe-segnet): BN with bn_mode, Upsample, DenseImageData, class weighting
    "segnet": """
message LayerParameter {
  drop embed_param;
  optional UpsampleParameter upsample_param = 137;
  optional BNParameter bn_param = 5001;
  optional DenseImageDataParameter dense_image_data_param = 5002;
}
message BNParameter {
  optional FillerParameter scale_filler = 1;
  optional FillerParameter shift_filler = 2;
  enum BNMode { LEARN = 0; INFERENCE = 1; }
  optional BNMode bn_mode = 3 [default = LEARN];
}
message UpsampleParameter {
  optional uint32 scale = 1 [default = 2];
  optional uint32 scale_h = 2;
  optional uint32 scale_w = 3;
  optional bool pad_out_h = 4 [default = false];
  optional bool pad_out_w = 5 [default = false];
  optional uint32 upsample_h = 6;
  optional uint32 upsample_w = 7;
}
message DenseImageDataParameter {
  optional string source = 1;
  optional string mean_file = 2;
  optional uint32 batch_size = 3 [default = 1];
  optional uint32 crop_height = 4 [default = 0];
  optional uint32 crop_width = 5 [default = 0];
  optional bool mirror = 6 [default = false];
  optional uint32 rand_skip = 7 [default = 0];
  optional bool shuffle = 8 [default = false];
  optional uint32 new_height = 9 [default = 0];
  optional uint32 new_width = 10 [default = 0];
  optional bool is_color = 11 [default = true];
  optional string root_folder = 12 [default = ""];
}
message LossParameter {
  optional bool weight_by_label_freqs = 5003 [default = false];
  repeated float class_weighting = 5004;
}
message DropoutParameter { optional bool sample_weights_test = 5005 [default = false]; }
""",
    # DeconvNet (HyeonwooNoh/caffe, V1 layers): BN = 43 and UNPOOLING = 42 with bn_param = 45
    # and unpooling_param = 44
    "deconvnet": """
message V1LayerParameter {
  enum LayerType { UNPOOLING = 42; BN = 43; }
  optional UnpoolingParameter unpooling_param = 44;
  optional BNParameter bn_param = 45;
}
message LayerParameter {
  optional UnpoolingParameter unpooling_param = 5044;
  optional BNParameter bn_param = 5045;
}
message BNParameter {
  optional FillerParameter scale_filler = 1;
  optional FillerParameter shift_filler = 2;
  enum BNMode { LEARN = 0; INFERENCE = 1; }
  optional BNMode bn_mode = 3 [default = LEARN];
  optional float var_eps = 4 [default = 1e-9];
}
message UnpoolingParameter {
  enum UnpoolMethod { MAX = 0; AVE = 1; TILE = 2; }
  optional UnpoolMethod unpool = 1 [default = MAX];
  optional uint32 kernel_size = 2;
  optional uint32 stride = 3 [default = 1];
  optional uint32 pad = 4 [default = 0];
  optional uint32 kernel_h = 5;
  optional uint32 kernel_w = 6;
  optional uint32 stride_h = 7;
  optional uint32 stride_w = 8;
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 unpool_size = 11;
  optional uint32 unpool_h = 12;
  optional uint32 unpool_w = 13;
}
""" + _SEG_DATA,
}

# The weights-only view of a .caffemodel: names, types and blobs of V1 and V2 layers, the same
# in every dialect (the layer's other fields, whose numbers the forks reuse, stay unknown
# fields and are never decoded). A V1 type is read as its enum number. BlobShape and BlobProto
# come from BVLC's schema.
_WEIGHTS = """
message LayerParameter {
  optional string name = 1;
  optional string type = 2;
  repeated BlobProto blobs = 7;
}
message V1LayerParameter {
  optional string name = 4;
  optional int32 type = 5;
  repeated BlobProto blobs = 6;
}
message NetParameter {
  optional string name = 1;
  repeated LayerParameter layer = 100;
  repeated V1LayerParameter layers = 2;
}
"""

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}

_TOKEN = re.compile(r'"[^"]*"|[A-Za-z_][A-Za-z0-9_.]*|-?[0-9][0-9.eE+-]*|[{}=;\[\],]')


def _parse(text):
    """The .proto subset above -> {"enums": {name: [(value, number)]}, "messages": {name:
    {"fields": [...], "enums": {...}, "drop": set()}}}, in declaration order."""
    tokens = _TOKEN.findall(re.sub(r"//[^\n]*", "", text))
    pos = 0

    def take(expected=None):
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if expected is not None and tok != expected:
            raise ConfigError(f"convnet.caffe.schema: expected {expected!r}, got {tok!r}")
        return tok

    def enum_body():
        values = []
        take("{")
        while tokens[pos] != "}":
            name = take()
            take("=")
            values.append((name, int(take())))
            take(";")
        take("}")
        return values

    out = {"enums": {}, "messages": {}}
    while pos < len(tokens):
        kind = take()
        name = take()
        if kind == "enum":
            out["enums"][name] = enum_body()
            continue
        msg = {"fields": [], "enums": {}, "drop": set()}
        take("{")
        while tokens[pos] != "}":
            tok = take()
            if tok == "enum":
                ename = take()
                msg["enums"][ename] = enum_body()
                continue
            if tok == "drop":
                msg["drop"].add(take())
                take(";")
                continue
            label, ftype, fname = tok, take(), take()
            take("=")
            number = int(take())
            options = {}
            if tokens[pos] == "[":
                take("[")
                while tokens[pos] != "]":
                    key = take()
                    take("=")
                    options[key] = take()
                    if tokens[pos] == ",":
                        take(",")
                take("]")
            take(";")
            msg["fields"].append((label, ftype, fname, number, options))
        take("}")
        known = out["messages"].setdefault(name, {"fields": [], "enums": {}, "drop": set()})
        known["fields"].extend(msg["fields"])
        known["drop"] |= msg["drop"]
        for ename, values in msg["enums"].items():
            known["enums"].setdefault(ename, []).extend(values)
    return out


def _merge(base, fork):
    """BVLC's parsed schema with a fork's additions merged in (see _FORKS)."""
    merged = {"enums": dict(base["enums"]), "messages": {}}
    for name, msg in base["messages"].items():
        merged["messages"][name] = {"fields": list(msg["fields"]),
                                    "enums": {k: list(v) for k, v in msg["enums"].items()},
                                    "drop": set()}
    for name, msg in fork["messages"].items():
        target = merged["messages"].setdefault(name, {"fields": [], "enums": {}, "drop": set()})
        target["fields"] = [f for f in target["fields"] if f[2] not in msg["drop"]]
        for field in msg["fields"]:
            target["fields"] = [f for f in target["fields"]
                                if f[3] != field[3] and f[2] != field[2]]
            target["fields"].append(field)
        for ename, values in msg["enums"].items():
            known = target["enums"].setdefault(ename, [])
            known.extend(v for v in values if v not in known)
    return merged


def _file_proto(schema, filename):
    fdp = descriptor_pb2.FileDescriptorProto(name=filename, package="caffe", syntax="proto2")
    enum_scope = {}
    for ename in schema["enums"]:
        enum_scope[ename] = f".caffe.{ename}"
    for mname, msg in schema["messages"].items():
        for ename in msg["enums"]:
            enum_scope[f"{mname}.{ename}"] = f".caffe.{mname}.{ename}"

    def add_enum(container, ename, values):
        e = container.add(name=ename)
        for vname, number in values:
            e.value.add(name=vname, number=number)

    for ename, values in schema["enums"].items():
        add_enum(fdp.enum_type, ename, values)
    F = descriptor_pb2.FieldDescriptorProto
    for mname, msg in schema["messages"].items():
        m = fdp.message_type.add(name=mname)
        for ename, values in msg["enums"].items():
            add_enum(m.enum_type, ename, values)
        for label, ftype, fname, number, options in msg["fields"]:
            f = m.field.add(name=fname, number=number,
                            label=F.LABEL_REPEATED if label == "repeated" else F.LABEL_OPTIONAL)
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            elif f"{mname}.{ftype}" in enum_scope or ftype in schema["enums"]:
                f.type = F.TYPE_ENUM
                f.type_name = enum_scope.get(f"{mname}.{ftype}", f".caffe.{ftype}")
            else:
                f.type = F.TYPE_MESSAGE
                f.type_name = f".caffe.{ftype}"
            if "default" in options:
                f.default_value = options["default"].strip('"')
            if options.get("packed") == "true":
                f.options.packed = True
    return fdp


_CLASSES = {}


def message_class(dialect, name):
    """The generated message class ``name`` ("NetParameter", "SolverParameter", ...) of a
    dialect (one of DIALECTS, or "weights" for the weights-only view of a caffemodel)."""
    key = (dialect, name)
    if key not in _CLASSES:
        if dialect == "weights":
            bvlc = _parse(_BVLC)["messages"]
            schema = _parse(_WEIGHTS)
            schema["messages"] = {"BlobShape": bvlc["BlobShape"], "BlobProto": bvlc["BlobProto"],
                                  **schema["messages"]}
        elif dialect == "bvlc":
            schema = _parse(_BVLC)
        elif dialect in _FORKS:
            schema = _merge(_parse(_BVLC), _parse(_FORKS[dialect]))
        else:
            raise ConfigError(f"convnet.caffe: unknown dialect {dialect!r}; expected one of "
                              f"{', '.join(DIALECTS)}")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(_file_proto(schema, f"convnet_caffe_{dialect}.proto"))
        for mname in schema["messages"]:
            _CLASSES[(dialect, mname)] = message_factory.GetMessageClass(
                pool.FindMessageTypeByName(f"caffe.{mname}"))
    return _CLASSES[key]
