"""``python -m diffusion.tools.bench``."""

from diffusion.tools.bench import main

main()
