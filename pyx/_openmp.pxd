# The OpenMP door: kernels cimport the omp_* names from here, never <omp.h>, so every
# module still compiles (and runs on one thread) when the compiler has no OpenMP.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CONVNET_OPENMP 1
    #else
    #define CONVNET_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    static void omp_set_num_threads(int n) { (void) n; }
    static int omp_get_thread_num(void) { return 0; }
    #endif
    """
    bint CONVNET_OPENMP
    int omp_get_max_threads() noexcept nogil
    void omp_set_num_threads(int n) noexcept nogil
    int omp_get_thread_num() noexcept nogil
