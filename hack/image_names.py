"""Print the image references the chart deploys: `python hack/image_names.py operator|trainer`.

The chart (`charts/kube-sft/values.yaml` repositories, `Chart.yaml` appVersion) is the one place
image names and tags come from; `make images` builds with these tags, and a unit test keeps the
appVersion equal to the package version in pyproject.toml.
"""

import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "kube-sft"


def image_references(chart: Path = CHART) -> dict[str, str]:
    """`{"operator": repo:tag, "trainer": repo:tag}` as the chart renders them by default."""
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = str(yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"])
    return {
        name: f"{values[key]['repository']}:{values[key].get('tag') or app_version}"
        for name, key in (("operator", "image"), ("trainer", "trainerImage"))
    }


if __name__ == "__main__":
    print(image_references()[sys.argv[1]])
