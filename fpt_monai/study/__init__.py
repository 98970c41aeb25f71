"""Accuracy study of any methods on any labelled dataset, by k-fold cross-validation through the MONAI bundle.

Every labelled image (training, validation and test of the datalist, pooled) is split into stratified folds. For
fold f the test part is fold f, and the rest is split again, stratified, into training and validation: each fold's
own validation part chooses the learning rate (best validation AUC with the first seed; a tie goes to the smaller
learning rate), then the other seeds train with it. Test AUC and accuracy are those of the best-validation weights.
Every run is the bundle itself (the packaged ``train.yaml`` + the method's preset, then ``evaluate.yaml`` on the
test part), and every store-based method and fold shares one feature store per backbone/size/variant under
``<out-dir>/tokens`` (item ids stay the original ones). Normalisation defaults to the backbone's statistics, so
the store does not depend on the fold.

Beside the bundle runs, scikit-learn's logistic regression on the stored pooled features (``logreg_sklearn``, C
chosen on validation) and on the mean of every extracted layer's stored values (``logreg_sklearn_tokens``: a linear
probe of the intermediate layers FPT reads, from the same store), also at other resolutions of the frozen model
(``--probe-img-sizes 224``: ``logreg_sklearn@224`` and ``logreg_sklearn_tokens@224``, from a store the study builds
through the bundle's preload). Every training
writes its final model.pt's validation probabilities (``eval/predictions_validation.csv``), so two methods can be
fused (``--fuse "A:B"``; default: every FPT-family method with the reference probe): ``fuse(A,B)`` blends their
probabilities per fold with the weight chosen on that fold's validation predictions, then is tested like any
method.

The summary gives per method the mean ± sd of test AUC/accuracy over folds × seeds, the per-fold means and chosen
learning rates (a fusion: its weights), and a paired comparison of test AUC against the reference: ``--reference``,
else the probe (``logreg_sklearn[_tokens][@size]`` or a ``linear_probe*`` method) with the highest mean VALIDATION
AUC of its chosen settings, and against every other probe: per (fold, seed) differences, folds won and a fold-wise
paired test (Wilcoxon signed-rank from 6 pairs, else paired t-test). Each method's costs: the mean training wall
time per run, the feature stores its runs used (GB) and their preload time when the study built them (each method's
store is built, timed, before its runs).
Beside it, DeLong's test for correlated AUCs on the pooled test predictions: every image is in one fold's test part,
so each method has one prediction per image (the chosen learning rate's probabilities averaged over seeds, read from
each run's ``eval/predictions_best.csv``), and both methods' AUCs over the same images are compared. A multi-class
task is tested one class against the rest, per class, without correction for testing several (the table shows the
smallest p). Runs without a predictions file (older studies) give DeLong "n/a".

    # the ISIC dermoscopy images in ../shared/data (relative to the current directory), 5 folds, the DINOv2
    # ViT-S/14 weights there
    fpt-monai study --device cuda --methods fpt_plus,fpt,linear_probe,full_finetune --epochs 20

    # any datalist JSON / CSV / ImageFolder tree, with its own learning-rate grids and an extra bundle override
    fpt-monai study --datalist /data/my/datalist.json --methods fpt_plus,lora,linear_probe \\
        --lrs "fpt_plus=1e-3,3e-4;linear_probe=1e-2,1e-3" --seeds 0,1,2 --set class_weighting=true
    fpt-monai study --csv labels.csv --path-column file --label-column diagnosis --folds 10
    fpt-monai study --image-folder /data/my_tree --folds 0   # its fixed train/val/test split as is

(``python scripts/study.py ...`` from a clone is the same command.) A method is a preset name, looked up in the
packaged presets' ``methods`` then ``recipes`` (``fpt_monai/configs``, ``configs/`` in a clone); ``a+b`` merges the
presets in that order (``fpt_plus+small_data``: FPT+ with the small-data recipe; ``fpt_plus+small_data+ema``:
and the EMA recipe).

Writes ``<out-dir>/study.{md,csv,json,png}``, ``<out-dir>/folds/fold<f>/datalist.json`` and one bundle folder per
run (``<out-dir>/runs/fold<f>/<method>_lr<lr>_seed<seed>``). Rerunning skips finished runs (``eval/metrics.json``
exists): use a new ``--out-dir`` when changing the data, the split or the training settings.

Modules: :mod:`~fpt_monai.study.defaults` (the default data and grids), :mod:`~fpt_monai.study.folds` (datalist,
image check, stratified folds), :mod:`~fpt_monai.study.runs` (bundle runs, learning-rate choice, the logistic
regression reference, the timed stores), :mod:`~fpt_monai.study.compare` (summaries, pooled predictions, paired and
DeLong tests, the reference's choice, costs), :mod:`~fpt_monai.study.fusion` (the blends),
:mod:`~fpt_monai.study.report` (Markdown, CSV, JSON, plot) and :mod:`~fpt_monai.study.run` (the whole study);
the command line is :mod:`fpt_monai.commands.study`.
"""
