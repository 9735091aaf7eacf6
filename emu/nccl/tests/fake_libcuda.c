/*
 * A minimal libcuda for tests/cuda_driver.rs: just the driver calls the NCCL stand-in and that
 * test make, with checks a careless stand-in would trip over.
 *
 * - Device addresses are host addresses with bit 62 set: non-canonical on x86-64 and aarch64,
 *   so dereferencing one directly faults. Only cuMemcpy* reach the memory.
 * - Each allocation belongs to the device whose context was current when it was made; a copy
 *   needs that context current on the calling thread (CUDA_ERROR_INVALID_CONTEXT otherwise),
 *   which is what a worker thread that forgot cuCtxSetCurrent would hit.
 * - Copies must lie inside one live allocation (CUDA_ERROR_INVALID_VALUE otherwise).
 * - fake_stream_syncs() counts cuStreamSynchronize calls.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUstream;

#define TAG (1ULL << 62)
#define DEVICES 2
#define MAX_ALLOCS 256
#define INVALID_VALUE 1
#define INVALID_DEVICE 101
#define INVALID_CONTEXT 201

static int contexts[DEVICES];
static __thread CUcontext current;
static long syncs;

struct alloc {
    uint64_t base;
    size_t size;
    int device;
};
static struct alloc allocs[MAX_ALLOCS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int current_device(void) {
    return current ? (int)((int *)current - contexts) : -1;
}

CUresult cuInit(unsigned flags) { (void)flags; return 0; }

CUresult cuDeviceGetCount(int *count) { *count = DEVICES; return 0; }

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    if (ordinal < 0 || ordinal >= DEVICES) return INVALID_DEVICE;
    *device = ordinal;
    return 0;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice device) {
    if (device < 0 || device >= DEVICES) return INVALID_DEVICE;
    *ctx = &contexts[device];
    return 0;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) { (void)device; return 0; }

CUresult cuCtxSetCurrent(CUcontext ctx) { current = ctx; return 0; }

CUresult cuCtxGetCurrent(CUcontext *ctx) { *ctx = current; return 0; }

CUresult cuCtxGetDevice(CUdevice *device) {
    if (!current) return INVALID_CONTEXT;
    *device = current_device();
    return 0;
}

CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t size) {
    if (!current) return INVALID_CONTEXT;
    void *host = calloc(1, size ? size : 1);
    if (!host) return 2;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_ALLOCS; i++) {
        if (allocs[i].base == 0) {
            allocs[i].base = (uint64_t)(uintptr_t)host;
            allocs[i].size = size;
            allocs[i].device = current_device();
            pthread_mutex_unlock(&lock);
            *ptr = (uint64_t)(uintptr_t)host | TAG;
            return 0;
        }
    }
    pthread_mutex_unlock(&lock);
    free(host);
    return 2;
}

CUresult cuMemFree_v2(CUdeviceptr ptr) {
    uint64_t base = ptr & ~TAG;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_ALLOCS; i++) {
        if (allocs[i].base == base) {
            allocs[i].base = 0;
            pthread_mutex_unlock(&lock);
            free((void *)(uintptr_t)base);
            return 0;
        }
    }
    pthread_mutex_unlock(&lock);
    return INVALID_VALUE;
}

/* The host address of [ptr, ptr + n) in an allocation of the current context's device. */
static CUresult resolve(CUdeviceptr ptr, size_t n, void **host) {
    if (!current) return INVALID_CONTEXT;
    if (!(ptr & TAG)) return INVALID_VALUE;
    uint64_t addr = ptr & ~TAG;
    CUresult r = INVALID_VALUE;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_ALLOCS; i++) {
        struct alloc *a = &allocs[i];
        if (a->base && addr >= a->base && addr + n <= a->base + a->size) {
            r = a->device == current_device() ? 0 : INVALID_CONTEXT;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    *host = (void *)(uintptr_t)addr;
    return r;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    void *host;
    CUresult r = resolve(dst, n, &host);
    if (r == 0) memcpy(host, src, n);
    return r;
}

CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    void *host;
    CUresult r = resolve(src, n, &host);
    if (r == 0) memcpy(dst, host, n);
    return r;
}

CUresult cuStreamSynchronize(CUstream stream) {
    (void)stream;
    if (!current) return INVALID_CONTEXT;
    __atomic_add_fetch(&syncs, 1, __ATOMIC_SEQ_CST);
    return 0;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
    switch (error) {
    case 0: *name = "CUDA_SUCCESS"; break;
    case INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
    case INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; break;
    case INVALID_CONTEXT: *name = "CUDA_ERROR_INVALID_CONTEXT"; break;
    default: *name = "CUDA_ERROR_UNKNOWN"; break;
    }
    return 0;
}

long fake_stream_syncs(void) { return __atomic_load_n(&syncs, __ATOMIC_SEQ_CST); }
