"""`python -m sft_operator.kubectl_plugin`: the same as the `kubectl-sft` console script."""

from sft_operator.kubectl_plugin.commands import main

main()
