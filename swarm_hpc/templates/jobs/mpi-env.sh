# shellcheck shell=sh
# Environment for Open MPI 4.1 jobs under `srun --mpi=pmix` on swarm-hpc clusters; source it in job scripts.
# Verified on the local test cluster (slurm/local-cluster.sh), 1 node and 3 namespace nodes.
#
# Open MPI's default transports (ob1 with btl tcp/vader) crashed now and then in MPI_Init across virtual nodes
# and when nodes share /dev/shm; UCX over TCP did not. Open MPI 4.1 only picks its UCX layer when it sees an
# InfiniBand-like transport unless pml_ucx_tls/devices say "any", so all four settings are needed together.
export OMPI_MCA_pml=ucx
export OMPI_MCA_pml_ucx_tls=any
export OMPI_MCA_pml_ucx_devices=any
export UCX_TLS=tcp,self
# Keep the byte-transfer layer off shared memory and InfiniBand too (one-sided and collective components).
export OMPI_MCA_btl=self,tcp
# Idle ranks (experts waiting for their turn) sleep instead of spinning on the CPU.
export OMPI_MCA_mpi_yield_when_idle=1
export UCX_WARN_UNUSED_ENV_VARS=n
