"""``python -m diffusion.data.procedural``: write a preview grid of generated sprites."""

from diffusion.data.procedural import main

main()
