# The UEO paper's protocol (Liang et al., ICML 2024): every data set, domain, category-shift
# setting, method, seed and both backbones. Run it with
#     python run_bench.py --config configs/ueo_paper.py --data-root DIR --device cuda --launcher slurm
# and list its runs with their resolved hyper-parameters without running anything with
#     python run_bench.py --config configs/ueo_paper.py --dry-run --show-hparams
# Any flag given on the command line overrides the value here (e.g. ``--seeds 1``).
#
# Every method runs its official recipe (docs/recipes.md: each value with the official file
# and line), in its official precision (UEO and UPL: fp16 weights and an fp16 prompt context, as
# ``clip.load`` gives on a GPU; MUST and TENT: fp32). A data set's own recipe comes from its
# ``recipes`` (DomainNet: UEO and InfoMax 5 epochs, tim-learn/UEO demo.sh) and is no departure.
# UPL is listed twice: ``pseudo_label`` (one prompt) and ``pseudo_label_ensemble`` (the released
# UPL: 16 prompts from seeds 1-16, logits averaged).
#
# 15 domains x 4 settings x 3 seeds = 180 cells per (method, backbone); 7 methods on ViT-B-16 and
# 6 on RN50 = 13 x 180 = 2340 runs. MUST needs a ViT (masked patch tokens), so it is left out on
# RN50 and reported as "not applicable" rather than run and failed, as in the paper.

methods = ["zero_shot", "tent", "pseudo_label", "pseudo_label_ensemble", "must", "ueo", "infomax"]
datasets = ["office31", "office_home", "visda2017", "domainnet"]
settings = ["cda", "pda", "oda", "opda"]
protocol = "ueo"
seeds = [1, 2, 3]
models = [
    dict(model="RN50", pretrained="openai"),
    dict(model="ViT-B-16", pretrained="openai"),
]
cfg_options = {f"{method}.precision": "official" for method in methods}
out = "results/ueo_paper"
device = "cuda"
launcher = "inline"
