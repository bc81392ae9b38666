"""Fields shared by every config; families override a few of them."""

import ml_collections

from configs import settings


def get_config(setting: str = "bf16") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.setting = "bf16"  # Name reported in results; `settings.apply` sets it with the rules.
    c.seed = 0

    # Model
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet20"  # Any key of qresnet.resnet.ARCHS.
    c.model.width = 1.0  # Filter multiplier of the residual stages (not the stem).
    c.model.dtype = "bfloat16"  # Compute dtype; quantizers run in float32.
    c.model.channel_multiple = 8  # Convs pad channel counts above this to multiples of it (same model; GPU speed).
    # "xla" (cuDNN on GPUs), "pallas" (3x3 stride-1 convs as Triton kernels, qresnet/conv_kernels.py;
    # off the GPU in Pallas's interpreter, slow) or "auto" ("pallas" on one CUDA GPU of compute
    # capability >= 8.0, else "xla"). Same model and accuracy; faster for narrow layers
    # (docs/performance.md).
    c.model.conv_impl = "auto"
    # With "pallas": convs wider than this stay on cuDNN (where cuDNN is as fast or faster).
    c.model.pallas_max_channels = 32
    # No BN (folded into each conv's bias) and each activation quantized once for all its readers:
    # the network `qresnet export` turns into int8 codes from conv to conv (qresnet/fused.py). Use
    # with a per-tensor setting (w8a8_fused, w4a4_ends8_fused), fine-tuned from a float run with BN
    # (init_from: its BN is folded in). configs/cifar10/resnet20_w8a8_fused.py.
    c.model.fold_bn = False
    # BN and activation-bound statistics per replica of this many examples, averaged over replicas,
    # as the paper's data-parallel training computed them (64 per TPU core); 0 = over the whole batch.
    # CIFAR keeps 0: per 64 images did not help the 4-bit ResNet-20 at batch 256 (docs/results.md,
    # "Replica statistics"), and CIFAR's batch is one device's.
    c.model.replica_size = 0

    # Data
    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "cifar10_jpeg"
    c.dataset.data_dir = ""  # "" searches $QRESNET_DATA, ./.data, ../shared/data, Debian's folder.
    c.dataset.via_tfds = True  # Offline datasets through their TFDS builders when TFDS is installed.
    c.dataset.tfds_dir = ""  # TFDS data dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets).
    c.dataset.crop_pad = 4  # Random crop after padding by this many pixels (0 = off).
    c.dataset.flip = True  # Random horizontal flip.
    c.dataset.synthetic_train = 512  # Examples, for the "synthetic" dataset only.
    c.dataset.synthetic_test = 256
    c.dataset.train_subset = 0  # Use N training examples drawn at random, fixed seed (0 = all).
    c.dataset.test_subset = 0  # Use N test examples drawn at random, fixed seed (0 = all).
    # Streaming datasets (imagenet2012) only:
    c.dataset.tfds_name = ""  # TFDS dataset to read ("" = dataset.name), prepared as array_record in tfds_dir.
    c.dataset.image_size = 0  # Crop size (0 = the dataset's, 224).
    c.dataset.workers = 8  # Decoding processes (0 = in the training process).
    c.dataset.jpeg_draft = True  # Train crops decode JPEGs at 1/2-1/8 scale where the crop stays >= image_size.
    # Decode only each crop's window of the JPEG on the CPU (nvImageCodec's libjpeg-turbo, the [nvimgcodec]
    # extra): the same pixels as a whole decode, in less time per image; on by default in configs/imagenet
    # (docs/performance.md).
    c.dataset.jpeg_window = False
    # Decodes and resizes: "opencv" (no antialiasing, as TF's resize), "pillow", or "nvjpeg" (on the GPU).
    c.dataset.image_backend = "opencv"
    # nvjpeg only: how the GPU decoding runs. Threads of the training process that call nvJPEG;
    # train batches decoded together in one call (torchvision decodes one call at a time per
    # process); and the share of each train batch decoded on the CPU instead (OpenCV, in the
    # workers), beside the GPU: the GPU decoding all of a batch feeds a ResNet-50 worse than
    # sharing it with the CPU; with fewer cores per GPU, a smaller CPU share.
    c.dataset.decode_threads = 3
    c.dataset.decode_batches_per_call = 2
    c.dataset.cpu_decode_share = 0.7
    # The GPU's decoder: "torchvision" (nvJPEG, one call at a time per process) or "nvimgcodec" (nvImageCodec:
    # batched, the crop's window only, the hardware decoder; the [nvimgcodec] extra and nvJPEG).
    c.dataset.gpu_decoder = "torchvision"

    # Quantization
    c.quant = ml_collections.ConfigDict()
    c.quant.rules = [(".*", None, None)]  # Ordered (regex, w_bits, a_bits[, options]); first match wins.
    c.quant.act_start_step = -1  # Step at which activation bounds freeze and inputs get quantized.
    c.quant.act_start_epoch = -1.0  # Used when act_start_step < 0: this epoch (fractions allowed).
    c.quant.act_start_frac = 0.2  # Used when both are < 0: this fraction of all steps.

    # Optimizer: SGD with Nesterov momentum; lr = base_lr * batch_size / 256.
    c.optim = ml_collections.ConfigDict()
    c.optim.batch_size = 256  # Global batch; must divide by the number of devices.
    # Micro-batches per step: gradients and statistics of batch_size / grad_accum_steps examples at a
    # time, averaged into one update (a large batch on few GPUs); with replica statistics the update
    # equals the whole batch's.
    c.optim.grad_accum_steps = 1
    c.optim.num_epochs = 200
    c.optim.base_lr = 0.2
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4  # L2 on kernels only, added to the loss.
    c.optim.warmup_epochs = 2.0  # Linear warm-up.
    c.optim.cosine_alpha = 0.0  # Floor of the cosine decay, relative to the peak.
    c.optim.cooldown_epochs = 0.0  # Final linear cool-down (multiplies the cosine).
    # A finished run's workdir to start from (its weights and BN statistics; fine-tuning); "" = random init.
    c.init_from = ""
    # Knowledge distillation from the float run named by init_from (its frozen weights, eval mode), or,
    # where init_from is a quantized run (a progressive fine-tune, e.g. 4 -> 3 -> 2 bits), from the float
    # run that run was fine-tuned from: loss = (1 - weight) * cross-entropy + weight * temperature^2 *
    # KL(teacher || student), both at the temperature. weight 0 = off.
    c.distill = ml_collections.ConfigDict()
    c.distill.weight = 0.0
    c.distill.temperature = 1.0

    # Evaluation, checkpoints, reporting
    c.eval_batch_size = 1000
    c.checkpoint_every_epochs = 10
    # Compile the float program of the model before a quantized run's own (for GPUs where XLA's
    # autotuning of a quantized program is slow without it); costs one compilation.
    c.compile_float_first = False
    c.smoothing_window = 5  # Triangular smoothing of eval accuracy (evals).

    c.cost = ml_collections.ConfigDict()
    c.cost.reference = ""  # "" = bf16 ResNet-50 (ImageNet models) / ResNet-20 (CIFAR); or a model name.

    return settings.apply(c, setting)
