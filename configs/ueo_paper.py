# The UEO paper's protocol (Liang et al., ICML 2024): every data set, domain, category-shift
# setting, method, seed and both backbones. Run it with
#     python run_bench.py --config configs/ueo_paper.py --data-root DIR --device cuda --launcher slurm
# and list its runs without running anything with ``--dry-run``. Any flag given on the command
# line overrides the value here (e.g. ``--seeds 1`` or ``--launcher local --workers 4``).
#
# 15 domains x 4 settings x 3 seeds = 180 cells per (method, backbone); 6 methods on ViT-B-16
# and 5 on RN50 = 11 x 180 = 1980 runs. MUST needs a ViT (masked patch tokens), so it is left
# out on RN50 and reported as "not applicable" rather than run and failed, as in the paper.
# Per-data-set budgets (e.g. fewer epochs on DomainNet) come from each data set's `overrides`.

methods = ["zero_shot", "tent", "pseudo_label", "must", "ueo", "infomax"]
datasets = ["office31", "office_home", "visda2017", "domainnet"]
settings = ["cda", "pda", "oda", "opda"]
protocol = "ueo"
seeds = [1, 2, 3]
models = [
    dict(model="RN50", pretrained="openai"),
    dict(model="ViT-B-16", pretrained="openai"),
]
out = "results/ueo_paper"
device = "cuda"
launcher = "inline"
