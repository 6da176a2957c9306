/* qevo-island: the MPI island-model optimizer. `mpirun -n N qevo-island config.json` */
#include "qevo/ops.h"
#include "qevo/run.h"

int main(int argc, char **argv)
{
    op_blas_select_kernels(argv); /* may re-execute once; before MPI starts */
    return run_island(argc, argv);
}
