/* Each rank sends 4 MiB to the next and checks what it got from the previous one:
   messages this large go through a single-copy mechanism between ranks of one node
   (Open MPI's vader with CMA: one rank reads the other's memory with
   process_vm_readv), which fails unless the kernel lets the ranks read each other.
   Rank 0 prints "N ranks copied 4194304 bytes: ok" (or "bad"); the exit status is 0
   only if every rank got the right bytes. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define BYTES (4 << 20)

int main(int argc, char **argv) {
    int rank, size, good, all;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    unsigned char *out = malloc(BYTES), *in = malloc(BYTES);
    for (int i = 0; i < BYTES; i++) out[i] = (unsigned char)(i * 7 + rank);
    int next = (rank + 1) % size, previous = (rank + size - 1) % size;
    MPI_Sendrecv(out, BYTES, MPI_BYTE, next, 0, in, BYTES, MPI_BYTE, previous, 0,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    good = 1;
    for (int i = 0; i < BYTES; i++) good &= in[i] == (unsigned char)(i * 7 + previous);
    MPI_Allreduce(&good, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (rank == 0) printf("%d ranks copied %d bytes: %s\n", size, BYTES, all ? "ok" : "bad");
    MPI_Finalize();
    return all ? 0 : 1;
}
