from diffusion.tools.gpu_check import main

main()
