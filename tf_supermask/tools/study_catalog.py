"""The declared studies: each seed paper's table as cells, seeds, scales and published numbers.

Pure data (no Keras, no TensorFlow), so ``tf-supermask-study list`` is instant. The
machinery that turns a study into runs, tables and checks is
tf_supermask/tools/studies.py.

Published numbers come from /work/shared/MISSION.md ("Published numbers to reproduce
and beat", "Reference semantics we match") and nowhere else; a cell whose number the
mission text does not give has none (``published`` empty), and its table row says so.
Accuracies are in percent, as the papers print them; tolerances in percentage points.

Scales: ``cpu`` is a reduced setting that finishes on 2 CPU cores (shorter training,
fewer images, Fashion-MNIST where the paper used MNIST, narrower conv nets) and is
labelled "reduced" wherever it is shown; ``full`` is the paper's own schedule from the
flagfiles under flags/. Scale flags go before a cell's own flags, so at the full scale
(no scale flags) the run names are those tf-supermask-batch gives the same jobs.
"""

from tf_supermask.tools.studies import Cell, Reference, Scale, Study

CPU, FULL = "cpu", "full"
BOTH = (CPU, FULL)

ZHOU_TABLE = "Zhou et al., NeurIPS 2019, reported test accuracy"
EDGE_POPUP_FIG = ("Ramanujan et al., CVPR 2020, best k with augmentation, read off the paper's "
                  "figure; not checked per k, checked on the k=best row")
HIDDEN_NETWORKS_FC = ("hidden-networks' own code on fc/Fashion-MNIST, k=0.5, 10 epochs, 3 seeds "
                      "87.88/87.96/87.90")

# The reduced settings, one place each.
CPU_FC_LOTTERY = ("--dataset=fashion_mnist", "--epochs=2", "--levels=5", "--verbose=0",
                  "--strategy=one_device")
CPU_FC_TRAIN = ("--dataset=fashion_mnist", "--train_size=16000", "--epochs=3", "--verbose=0",
                "--strategy=one_device")


def _lth():
    cells = [Cell(axes=(("model", "fc"),), flagfile="flags/lottery_fc_mnist.cfg")]
    cells += [Cell(axes=(("model", model),), flagfile=f"flags/lottery_{model}_cifar10.cfg",
                   scales=(FULL,)) for model in ("conv2", "conv4", "conv6")]
    return Study(
        name="lth", binary="lottery",
        title="Frankle & Carbin (ICLR 2019): lottery tickets by iterative magnitude pruning",
        description="IMP with rewinding to init (large_final, per-layer rates 20% dense, 10% "
                    "output, 10%/15% conv); the metric is the last level's test accuracy. "
                    "No single published number is checked for these cells.",
        cells=tuple(cells),
        scales={CPU: Scale(CPU_FC_LOTTERY, "fc only, Fashion-MNIST instead of MNIST, 2 epochs "
                                           "per level, 5 levels (32.8% of the weights left)"),
                FULL: Scale((), "the paper's schedule (flags/lottery_*.cfg)")})


ZHOU_CRITERIA = ("large_final", "small_final", "large_init", "small_init",
                 "large_init_large_final", "small_init_small_final", "magnitude_increase",
                 "movement", "random", "large_final_same_sign", "magnitude_increase_same_sign")


def _zhou_criteria():
    return Study(
        name="zhou_criteria", binary="lottery",
        title="Zhou et al. (NeurIPS 2019): mask criteria under IMP on fc",
        description="One IMP experiment per criterion, evaluating each level's mask trained and "
                    "untrained; the metric is the last level's test accuracy. No published number "
                    "is checked per criterion.",
        cells=tuple(Cell(axes=(("criterion", c),), flagfile="flags/zhou_criteria_fc_mnist.cfg",
                         flags=(f"--criterion={c}",)) for c in ZHOU_CRITERIA),
        scales={CPU: Scale(CPU_FC_LOTTERY, "Fashion-MNIST instead of MNIST, 2 epochs per level, "
                                           "5 levels"),
                FULL: Scale((), "flags/zhou_criteria_fc_mnist.cfg (55 epochs, 15 levels, MNIST)")})


def _zhou_supermask():
    dense = {"conv2": 69.2, "conv4": 75.4, "conv6": 78.3}
    learned = {"conv2": 66.0, "conv4": 72.5, "conv6": 76.5}
    cells = [Cell(axes=(("method", "learned supermask"), ("model", "fc")),
                  flagfile="flags/zhou_supermask_fc.cfg",
                  published={FULL: Reference(98.0, ZHOU_TABLE + ", MNIST", 1.0)})]
    for model in ("conv2", "conv4", "conv6"):
        cells.append(Cell(axes=(("method", "dense trained"), ("model", model)),
                          flagfile=f"flags/dense_{model}.cfg", scales=(FULL,),
                          published={FULL: Reference(dense[model], ZHOU_TABLE, 1.5)}))
        cells.append(Cell(axes=(("method", "learned supermask"), ("model", model)),
                          flagfile=f"flags/zhou_supermask_{model}.cfg", scales=(FULL,),
                          published={FULL: Reference(learned[model], ZHOU_TABLE, 1.5)}))
    return Study(
        name="zhou_supermask", binary="train",
        title="Zhou et al. (NeurIPS 2019): learned Bernoulli supermasks against dense training",
        description="Signed-constant weights with dynamic rescaling, SGD lr 100; dense "
                    "baselines with the Zhou/Frankle setup (CIFAR-10 for conv).",
        cells=tuple(cells),
        scales={CPU: Scale(CPU_FC_TRAIN, "fc only, Fashion-MNIST instead of MNIST, 16,000 "
                                         "training images, 3 epochs"),
                FULL: Scale((), "flags/zhou_supermask_*.cfg and flags/dense_*.cfg")})


def _edgepopup():
    best = {"conv2": 77.5, "conv4": 86.0, "conv6": 88.0, "conv8": 88.5}
    cells = []
    for model in ("conv2", "conv4", "conv6", "conv8"):
        # No edge-popup conv8 flagfile: conv8 reuses conv6's with --model=conv8.
        flagfile, model_flag = ((f"flags/edgepopup_{model}.cfg", ()) if model != "conv8"
                                else ("flags/edgepopup_conv6.cfg", ("--model=conv8",)))
        for k in ("0.3", "0.5", "0.7"):
            cells.append(Cell(axes=(("model", model), ("k", k)), flagfile=flagfile,
                              flags=model_flag + (f"--k={k}",), scales=(FULL,),
                              published={FULL: Reference(best[model], EDGE_POPUP_FIG, None)}))
    for k in ("0.3", "0.5", "0.7"):
        published = {CPU: Reference(87.9, HIDDEN_NETWORKS_FC, 1.0)} if k == "0.5" else {}
        cells.append(Cell(axes=(("model", "fc"), ("k", k)), flagfile="flags/edgepopup_fc.cfg",
                          flags=(f"--k={k}",), scales=(CPU,), published=published))
    return Study(
        name="edgepopup", binary="train",
        title="Ramanujan et al. (CVPR 2020): edge-popup top-k supermasks, k sweep",
        description="Signed Kaiming constant weights, SGD lr 0.1 cosine, 100 epochs with "
                    "augmentation on CIFAR-10 (conv2 to conv8). The cpu scale is fc on "
                    "Fashion-MNIST for 10 epochs, where hidden-networks' own code was measured.",
        cells=tuple(cells),
        scales={CPU: Scale(("--dataset=fashion_mnist", "--epochs=10", "--verbose=0",
                            "--strategy=one_device"),
                           "fc on all of Fashion-MNIST, 10 epochs (the reference-code "
                           "measurement's setting)"),
                FULL: Scale((), "flags/edgepopup_*.cfg (conv8 reuses conv6's flagfile)")},
        # The paper plots the best k per network: the k=best row is checked against it,
        # within 2 points (a number read off a figure).
        best_over="k", best_tolerance=2.0)


def _liu_compare():
    cells = []
    for lr in ("0.1", "0.01"):
        for sparsity in ("0.5", "0.7", "0.9"):
            for arm in ("lottery", "rewind", "finetune"):
                axes = (("model", "fc"), ("lr", lr), ("sparsity", sparsity), ("arm", arm))
                cells.append(Cell(axes=axes, flagfile="flags/finetune_compare_fc_fashion_mnist.cfg",
                                  flags=(f"--lr={lr}",), scales=(CPU,),
                                  metric=f"arms[arm={arm},sparsity={sparsity}].test_accuracy"))
                # Full: one run per sparsity (ResNet-20, CIFAR-10).
                axes = (("model", "resnet20"),) + axes[1:]
                cells.append(Cell(
                    axes=axes, flagfile="flags/finetune_compare_resnet20_cifar10.cfg",
                    flags=(f"--lr={lr}", f"--sparsities={sparsity}"), scales=(FULL,),
                    metric=f"arms[arm={arm},sparsity={sparsity}].test_accuracy"))
    return Study(
        name="liu_compare", binary="finetune",
        title="Liu et al. (ICML 2021): lottery ticket vs late rewinding vs pruning & fine-tuning",
        description="One-shot magnitude pruning per layer, the same total epochs for every arm; "
                    "pretraining at lr 0.1 and 0.01. No single published number is checked for these cells.",
        cells=tuple(cells),
        scales={CPU: Scale(("--verbose=0",), "fc on Fashion-MNIST, 8+8 epochs "
                                             "(flags/finetune_compare_fc_fashion_mnist.cfg)"),
                FULL: Scale((), "ResNet-20 on CIFAR-10, 150+150 epochs "
                                "(flags/finetune_compare_resnet20_cifar10.cfg)")})


PRUNE_INIT_METHODS = ("random", "magnitude", "snip", "grasp", "synflow", "kstarts",
                      "dissipating", "kstarts_dissipating")


def _prune_init():
    cells = []
    for method in PRUNE_INIT_METHODS:
        for shuffled in (False, True):
            extra = ("--shuffle",) if shuffled else ()
            axes = (("method", method), ("shuffled", "yes" if shuffled else "no"))
            for sparsity in ("0.8", "0.9", "0.95", "0.98"):
                cells.append(Cell(axes=(("model", "fc"),) + axes + (("sparsity", sparsity),),
                                  flagfile="flags/prune_init_fc.cfg",
                                  flags=(f"--method={method}", f"--sparsity={sparsity}") + extra,
                                  scales=(CPU,)))
            cells.append(Cell(axes=(("model", "conv4"),) + axes + (("sparsity", "0.9"),),
                              flagfile="flags/prune_init_conv4.cfg",
                              flags=(f"--method={method}", "--sparsity=0.9") + extra,
                              scales=(FULL,)))
    return Study(
        name="prune_init", binary="prune_init",
        title="Pruning at initialization: random, magnitude, SNIP, GraSP, SynFlow and Haroon's "
              "K-starts and dissipating gradients",
        description="Each method and its shuffled twin (the method's mask shuffled per layer). "
                    "Haroon's paper has no table to compare with (abstract only); no published number "
                    "is checked.",
        cells=tuple(cells),
        scales={CPU: Scale(("--dataset=fashion_mnist", "--train_size=16000",
                            "--validation_size=2000", "--epochs=3", "--verbose=0",
                            "--strategy=one_device"),
                           "fc on Fashion-MNIST, 16,000 training images, 3 epochs"),
                FULL: Scale((), "conv4 on CIFAR-10, 40 epochs (flags/prune_init_conv4.cfg)")})


def _patches():
    inits = (("patches (every layer)", ("--init=patches", "--patches_layers=0")),
             ("patches (first block)", ("--init=patches", "--patches_layers=2")),
             ("kaiming_normal", ("--init=kaiming_normal",)),
             ("signed_kaiming_constant", ("--init=signed_kaiming_constant",)))
    cells = []
    for model in ("conv2", "conv4", "conv6", "conv8"):
        for init, init_flags in inits:
            if model == "conv2" and init == "patches (first block)":
                continue  # conv2 has one block: the same run as every layer
            for k in ("0.1", "0.3", "0.5", "0.7"):
                scales = BOTH if (k == "0.5" and model != "conv8") else (FULL,)
                cells.append(Cell(axes=(("model", model), ("init", init), ("k", k)),
                                  flagfile=f"flags/patches_{model}.cfg",
                                  flags=init_flags + (f"--k={k}",), scales=scales))
    return Study(
        name="patches", binary="train",
        title="PatchesInit (Rencoret, 2020): supermasks over weights initialised from data "
              "patches, against random initializations",
        description="Edge-popup top-k supermasks on CIFAR-10. The thesis text is not available, "
                    "so no published number is quoted.",
        cells=tuple(cells),
        scales={CPU: Scale(("--width=0.25", "--epochs=3", "--train_size=10000",
                            "--validation_size=1000", "--noaugment", "--verbose=0",
                            "--strategy=one_device"),
                           "conv2/4/6 at a quarter width, 10,000 CIFAR-10 images, 3 epochs, "
                           "k = 0.5 only (the CPU pilot's setting)"),
                FULL: Scale((), "flags/patches_conv*.cfg (100 epochs, augmentation)")})


STUDIES = {study.name: study for study in (
    _lth(), _zhou_criteria(), _zhou_supermask(), _edgepopup(), _liu_compare(), _prune_init(),
    _patches())}
