"""The reference ADNI recipe: ConvNeXt-T from scratch at 224 px on the official folders.

    python -m alz_jax.main --config=configs/convnext_t.py --workdir=runs/convnext_t \
        --config.data.manual_dir=/path/to/adni   # the folder holding AD_NC/

AdamW lr 1e-3, weight decay 0.05, global batch 512, 5 warmup epochs then cosine, drop path 0.1,
label smoothing 0.1, gradient clipping 1.0, 400 epochs (about 14.8k steps: ADNI's 21,520 train
images less ~10% for validation subjects give ~37 steps per epoch); EMA (0.9999 with warmup) and
SWA from 80% of training, validated beside the raw weights; bfloat16 compute on GPU/TPU. Best
checkpoint by validation loss over raw, EMA and SWA weights. Multi-process: the same command on
every process (README, "Multi-process data parallelism"). Expected: the PyTorch seed report
reached 0.81 slice accuracy on the official test folder (which shares subjects with train);
expect ~0.78-0.81 per slice, a few points more per scan. Time: not yet measured on an
accelerator; on a 2-core CPU this recipe is impractical (see configs/demo.py).
"""

import ml_collections


def _data(config: ml_collections.ConfigDict) -> None:
    """The data set: where it is, how it is split, the image size and the input workers."""
    config.data = ml_collections.ConfigDict()
    # Folder holding AD_NC/{train,test}/{AD,NC}/ (or train/ and test/ directly).
    config.data.manual_dir = ml_collections.config_dict.placeholder(str)
    config.data.data_dir = "~/tensorflow_datasets"  # where TFDS writes the prepared data set
    # When manual_dir is unset and this is set, a synthetic stand-in is generated with this seed.
    config.data.synthetic_seed = ml_collections.config_dict.placeholder(int)
    config.data.synthetic_train_subjects = 150
    config.data.synthetic_test_subjects = 60
    config.data.validation_fraction = 0.1  # of train-folder subjects, stratified by class
    config.data.calibration_fraction = 0.0  # >0: that share of train subjects calibrates
    config.data.split_seed = 0
    # Protocol: 'official' (the folders; test shares subjects with train on ADNI), 'resplit'
    # (both folders pooled, re-split by subject) or 'kfold' (fold `fold` of `num_folds` is test).
    config.data.protocol = "official"
    config.data.resplit_fractions = (0.7, 0.1, 0.2)  # train, validation, test (by subject)
    config.data.num_folds = 5
    config.data.fold = 0
    # '' (all slices), 'auto' (indices present in both classes: removes the slice-window
    # shortcut) or 'lo,hi'.
    config.data.slice_range = ""
    # Scans whose label in meta_data_with_label.json contradicts their class folder stop the
    # build's use (any, by default); trust the folders, or allow a share of them.
    config.data.trust_folder_labels = False
    config.data.max_label_conflicts = 0.0
    # The folder's layout: 'auto' (detected), 'adni', 'folders' (class folders, with or without
    # train/val/test), 'oasis' (OASIS-1 slice names) or 'parquet' (docs/stages.md). Integer
    # parquet labels without names in the files are named here, in order: 'A,B,C,D'.
    config.data.layout = "auto"
    # auto: the classes are an ordinal scale when every one is a dementia stage (true/false:
    # as set); ordinal runs report MAE, within-one and kappa, and their prediction sets are ranges.
    config.data.ordinal = "auto"
    config.data.label_names = ""
    # Without subject IDs (four-class folders, parquet): let groups of near-identical images (a
    # brain's adjacent slices) stand in for subjects, for splits that keep a brain together.
    config.data.group_near_duplicates = False
    # A class without images in a split (train/MildDemented empty, a class only under test/) or
    # a class name a letter from a stage or another class (VeryMildDemnted) stops the run;
    # accept them as meant with these.
    config.data.allow_missing_classes = False
    config.data.allow_similar_class_names = False
    _volumes(config)
    # The synthetic stand-in's layout: 'adni' (AD vs NC), a four-stage set in the 'folders',
    # 'oasis' or 'parquet' layout, or a cohort of 3D volumes ('caps', 'oasis1', 'nifti'), with
    # synthetic_subjects subjects.
    config.data.synthetic_layout = "adni"
    config.data.synthetic_subjects = 160
    # The four-stage stand-in's difficulty: 'standard' or 'hard' (closer stages, more anatomy
    # between subjects).
    config.data.synthetic_difficulty = "standard"
    # Draw training images class-balanced (with replacement) instead of shuffled passes.
    config.data.balanced_sampling = False
    # Scan models: slices per training bag, drawn from the scan with a seeded draw each step
    # (0: all of the longest scan's count; shorter scans repeat some); augmentation drawn per
    # 'slice' or once per 'bag'. Evaluation always sees every slice of a scan.
    config.data.bag_size = 16
    config.data.bag_augment = "slice"
    # 2.5D input for any model: each slice with this many neighbours of its scan on each side
    # as channels (1 -> 3 channels).
    config.data.neighbours = 0
    config.data.image_size = 224
    config.data.num_workers = 4  # Grain worker processes (0 = decode in the main process)
    config.data.eval_num_workers = 4
    config.data.prefetch_buffer_size = 2


def _volumes(config: ml_collections.ConfigDict) -> None:
    """3D volumes (layouts 'caps', 'oasis1', 'nifti'; docs/volumes.md): how slices are cut and
    how each layout's table becomes labels."""
    # A label table given by path (CAPS: ClinicaDL's TSV; nifti: path,subject,session,label).
    config.data.labels_tsv = ""
    # Volumes are reoriented to RAS; slices along 'sagittal', 'coronal' or 'axial'. ClinicaDL's
    # range (drop volume_discard slices at each end), or volume_window > 0 slices around the
    # volume's 'middle' or the brain's centre of 'mass'; every volume_step-th slice.
    config.data.volume_axis = "sagittal"
    config.data.volume_discard = 20
    config.data.volume_window = 0
    config.data.volume_centre = "middle"
    config.data.volume_step = 1
    # Per volume: clip at these percentiles, scale to 0..255; slices stored volume_size square,
    # the aspect kept ('pad') or stretched ('resize').
    config.data.volume_clip = (0.5, 99.5)
    config.data.volume_size = 224
    config.data.volume_fit = "pad"
    config.data.volume_voxels = "refuse"  # voxels that are not 1 mm: 'refuse' or 'resample'
    config.data.volume_classes = ""  # caps, nifti: classes kept, in order ('' = NC,AD for caps)
    # OASIS-1: the skull-stripped ('masked') or 'unmasked' T88 image; CDR as four 'stages' or
    # 'binary' (CDR 0 is NC, oasis_ad_cdr are AD, the rest left out); blank CDR (young
    # controls): 'skip' (counted) or 'control' (as CDR 0).
    config.data.oasis_image = "masked"
    config.data.oasis_labels = "stages"
    config.data.oasis_ad_cdr = "1,2"
    config.data.oasis_blank_cdr = "skip"
    config.data.volume_workers = 0  # processes slicing volumes (0: the cores, up to 8)


def _augment(config: ml_collections.ConfigDict) -> None:
    """Host augmentation (the device adds the noise)."""
    # The seed report's torchvision pipeline, op for op (REFERENCE.md), on single-channel uint8.
    config.augment = ml_collections.ConfigDict()
    config.augment.crop_scale = (0.8, 1.0)  # random resized crop, always
    config.augment.crop_ratio = (3 / 4, 4 / 3)
    # Not anatomical symmetries of sagittal slices (see ADNI.md); the seed report used both.
    config.augment.hflip_prob = 0.5
    config.augment.vflip_prob = 0.2
    config.augment.rotate_prob = 1.0
    config.augment.rotate_deg = 15.0
    config.augment.affine_prob = 1.0
    config.augment.translate = 0.05
    config.augment.affine_scale = (0.95, 1.05)
    config.augment.shear_deg = 5.0
    config.augment.blur_prob = 1.0
    config.augment.blur_kernel = 3
    config.augment.blur_sigma = (0.1, 1.0)
    config.augment.jitter_prob = 0.0
    config.augment.brightness = 0.0
    config.augment.contrast = 0.0
    config.augment.noise_prob = 1.0  # on device, in float, after the image leaves uint8
    config.augment.noise_std = 0.02  # in [0, 1] pixel units
    config.augment.erase_prob = 0.25
    config.augment.erase_scale = (0.02, 0.33)
    config.augment.erase_ratio = (0.3, 3.3)
    config.augment.erase_value = 0


def _mix(config: ml_collections.ConfigDict) -> None:
    """Mixup/CutMix."""
    # Mixup/CutMix as in the seed report, within groups of consecutive examples, with its
    # three-phase schedule: full strength until 50% of training, fading to none by 75%.
    config.mix = ml_collections.ConfigDict()
    config.mix.mixup_alpha = 0.8
    config.mix.cutmix_alpha = 1.0
    config.mix.prob = 1.0
    config.mix.switch_prob = 0.5
    config.mix.mode = "batch"  # batch | pair | elem
    config.mix.group_size = 64  # must divide the per-process batch
    config.mix.explore_end = 0.5
    config.mix.transition_end = 0.75


def _model(config: ml_collections.ConfigDict) -> None:
    """The model, its compute dtype, the train step's form and microbatching."""
    config.model = ml_collections.ConfigDict()
    # The family and variant: 'convnext' (of model.size, or depths and dims), 'convnext_tiny',
    # 'vit_ti16' | 'vit_s16' | 'vit_b16', 'resnet50', 'efficientnet_b0', 'simple_cnn' (models.md).
    config.model.name = "convnext"
    # Other families: overrides of the named variant's architecture fields, e.g.
    # {"depths": (1, 1), "widths": (8, 16)} for a small ResNet (alz_jax/models/<family>.py).
    config.model.arch = ml_collections.ConfigDict()
    config.model.size = "tiny"  # atto .. large; empty to use depths and dims below
    config.model.depths = ()
    config.model.dims = ()
    config.model.in_chans = 1
    config.model.num_classes = 2
    config.model.drop_path_rate = 0.1
    # Dropout of the pooled features before the classifier, in training (timm's drop_rate).
    config.model.head_dropout = 0.0
    config.model.param_dtype = "float32"
    # Depthwise 7x7 convolution: 'auto' (XLA's grouped conv on GPU/TPU, 'shift' on CPU, where
    # it is several times faster), 'xla' or 'shift'. Same parameters and result either way.
    config.model.depthwise = "auto"
    # Start from PyTorch ImageNet weights: 'torchvision:PATH', 'timm:PATH', 'fb:PATH' or
    # 'huggingface:PATH' (a .safetensors file, or a .pth when torch is installed); the
    # 3-channel stem is summed to one channel and the 1000-class head re-initialised. Empty:
    # train from scratch.
    config.model.init_from = ""
    # Scan models (docs/scan_models.md): 'none' trains on single slices; 'mean', 'attention'
    # or 'transformer' encode every slice of a bag (data.bag_size slices of one scan) with the
    # model above and pool them into one prediction per scan. model.init_from also takes
    # 'run:WORKDIR', a trained slice run whose weights start the encoder.
    config.model.head = "softmax"  # softmax, or an ordinal head: coral|corn (docs/models.md)
    config.model.aggregator = "none"
    config.model.attention_dim = 128  # the gated attention's hidden width
    config.model.transformer_depth = 1  # 'transformer': blocks over the slice embeddings
    config.model.transformer_heads = 4
    config.model.max_positions = 512  # 'transformer': the longest scan it can place
    config.model.remat = False  # recompute the encoder's activations in the backward pass
    # CNN families: pool the last feature map with a learned spatial attention map (drawn
    # beside Grad-CAM in the report) instead of a plain average.
    config.model.spatial_attention = False

    # Compute dtype of activations, matmuls and convolutions: 'auto' is bfloat16 on GPU/TPU and
    # float32 on CPU. Parameters, optimizer state, LayerNorm statistics, softmax and loss stay
    # float32 whatever this says.
    config.dtype = "auto"
    config.step_impl = "jit"  # 'jit' (XLA partitions the step) or 'shard_map' (explicit pmean)
    # Microbatches per optimizer step: the same update from 1/k of the activation memory.
    config.grad_accum_steps = 1


def _optimization(config: ml_collections.ConfigDict) -> None:
    """AdamW, the batch, the run's length, logging and profiling."""
    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1e-3
    config.optim.end_learning_rate = 1e-6
    config.optim.weight_decay = 0.05
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.grad_clip_norm = 1.0
    config.optim.label_smoothing = 0.1
    # Loss weight per class: 'none', 'balanced' (n / (K n_c) on the train split, as
    # scikit-learn's) or one weight per class in label order, e.g. '1,1.5,2,4'.
    config.optim.class_weights = "none"
    # Layer-wise learning-rate decay for fine-tuning: layer k below the head learns at
    # layer_decay**k times the rate (e.g. 0.8 with init_from); 1.0 is off.
    config.optim.layer_decay = 1.0
    # What trains: 'all', 'head', 'last_stage' (the last stage or blocks and the head) or a
    # regex over '/'-joined parameter paths; the rest is frozen and has no optimizer state.
    config.optim.trainable = "all"
    # BatchNorm of frozen layers (ResNet, EfficientNet): 'running' keeps their ImageNet running
    # statistics and normalises with them (timm's freeze, Keras); 'batch' updates them.
    config.optim.frozen_batchnorm = "running"

    config.batch_size = 512  # global, over all devices and processes
    # Durations: *_steps, when set, wins over *_epochs; converted to steps in one place.
    config.num_epochs = 400
    config.num_train_steps = ml_collections.config_dict.placeholder(int)
    config.warmup_epochs = 5
    config.warmup_steps = ml_collections.config_dict.placeholder(int)
    config.eval_every_epochs = 5
    config.eval_every_steps = ml_collections.config_dict.placeholder(int)
    config.log_every_steps = 50
    # A jax.profiler trace of steps [start_step, start_step + num_steps) into WORKDIR/profile
    # (TensorBoard's profile tab or ui.perfetto.dev); num_steps = 0 traces nothing.
    config.profile = ml_collections.ConfigDict()
    config.profile.start_step = 10
    config.profile.num_steps = 0


def _averages(config: ml_collections.ConfigDict) -> None:
    """The EMA and SWA weight averages."""
    # Weight averages, both evaluated beside the raw weights at every validation (REFERENCE.md).
    config.ema = ml_collections.ConfigDict()
    config.ema.enabled = True
    config.ema.decay = 0.9999
    # Warmup: decay_t = 1 - (1 + t/gamma)^-power, clipped to [min_decay, decay]. 0.9999 alone
    # would average over ~10k of this recipe's ~15k steps.
    config.ema.warmup = True
    config.ema.warmup_gamma = 1.0
    config.ema.warmup_power = 2 / 3
    config.ema.min_decay = 0.0
    config.ema.dtype = "float32"  # or bfloat16: 2 bytes per parameter, stochastically rounded
    config.swa = ml_collections.ConfigDict()
    config.swa.enabled = True
    config.swa.start_fraction = 0.8  # of training, as in the seed recipe
    config.swa.every_epochs = 1  # or every_steps
    config.swa.every_steps = ml_collections.config_dict.placeholder(int)
    config.swa.dtype = "float32"
    # Models with BatchNorm: SWA weights get their statistics recomputed over this many whole
    # train batches before each validation (0: the whole train split), as torch's update_bn.
    config.swa.bn_update_batches = 0


def _evaluation(config: ml_collections.ConfigDict) -> None:
    """Evaluation reports and checkpoints."""
    # Evaluation reports (README, "Evaluation reports"); `evaluate` flags override these.
    config.eval = ml_collections.ConfigDict()
    # Decision threshold chosen on validation, then applied unchanged to test: 'youden'
    # (max sensitivity + specificity - 1) or 'sensitivity:0.9' (best specificity at >= 0.9).
    config.eval.threshold = "youden"
    config.eval.temperature_scaling = False  # always fitted on validation; applied if True
    config.eval.calibration_bins = 10
    config.eval.bootstrap_samples = 1000  # resamples of test subjects for 95% intervals
    config.eval.bootstrap_seed = 0
    config.eval.tta = ""  # test-time views reported beside the plain result: 'hflip,vflip'
    config.eval.gradcam_scans = 4  # scans drawn with Grad-CAM (round-robin TP, TN, FN, FP)
    config.eval.gradcam_slices = 5  # evenly spaced slices of each
    # Ordered stages (docs/uncertainty.md): the call is auto (CORAL/CORN: the median stage;
    # softmax: the most probable), argmax, median or expected (the expected stage, rounded).
    config.eval.ordinal_decision = "auto"
    # Prediction sets with coverage 1 - alpha on validation's scans and subjects: score aps|lac,
    # calibration marginal|class (Mondrian: a quantile per class, for rare classes).
    config.eval.conformal_alpha = 0.1
    config.eval.conformal_score = "aps"
    config.eval.conformal_calibration = "marginal"
    config.eval.abstain_rate = 0.0  # predict refers this share of least confident cases

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.keep_latest = 2
    config.checkpoint.keep_best = 1
    # Chosen over every evaluated weight set (raw, EMA, SWA); the checkpoint records the winner.
    config.checkpoint.best_metric = "validation/loss"
    config.checkpoint.best_mode = "min"


def get_config() -> ml_collections.ConfigDict:
    """Returns the reference ConvNeXt-T ADNI config."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    for add in (_data, _augment, _mix, _model, _optimization, _averages, _evaluation):
        add(config)
    return config
