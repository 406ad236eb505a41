// Stands for the CUDA header of this name when the kernels are built for the CPU emulator.
#pragma once
#include "../device.h"
