/* qevo-island: the MPI island-model optimizer. `mpirun -n N qevo-island config.json` */
#include "qevo/run.h"

int main(int argc, char **argv)
{
    return run_island(argc, argv);
}
