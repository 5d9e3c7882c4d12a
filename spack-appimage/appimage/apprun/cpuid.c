/*
 * The CPU's own answer to "has this host the kernel flag X?" (cpu.h's cpuid_has), which
 * cpu.c asks before /proc/cpuinfo: the kernel formats that file afresh at every read
 * (25-45 us for the first processor, mostly its "cpu MHz" line, measured on a 2-core VM).
 * The registers come from glibc's copy of the CPUID leaves, which it read as the program
 * started, so asking costs no instruction that leaves the program: CPUID itself costs
 * about 0.1 us on bare metal but 1.2-2 us in a VM, where it exits to the hypervisor, and
 * a target needs 4-6 leaves (then asked once each). XGETBV (the OS's XCR0) is not trapped.
 * Measured on a 2-core VM: the whole check of a 50-flag target costs 3-4 us in a new
 * process (the /proc/cpuinfo read cost 50-80), most of it the lookups of the flags.
 *
 * What it answers is /proc/cpuinfo's meaning, the flags the kernel reports as usable: the
 * bit of cpufeatures.h's CPUID leaf and register for each name, and for the instructions
 * that use register state the OS must enable (XSAVE, VEX and EVEX encodings, protection
 * keys, AMX tiles) that state enabled in XCR0 too, as the kernel drops those flags when it
 * did not enable it (cpuid-deps.c clears avx and everything above it with xsave). Where the
 * two can differ, the CPU's answer is what the instructions do:
 *  - a flag cleared by a boot parameter (clearcpuid=...) leaves the instructions working
 *    (the kernel's documentation says programs still see it in CPUID);
 *  - a kernel older than a flag does not print its name, while the CPU runs it;
 *  - f16c, fma4 and xop are VEX/XOP-encoded, so they fault without the OS's AVX state
 *    like avx, which the kernel clears alone when booted with XSAVE off.
 *
 * The table holds the flags archspec's x86_64 targets use (appimage/cpu.py), except
 * ibrs_enhanced (zen5): Intel says it in the IA32_ARCH_CAPABILITIES MSR, which the kernel
 * reads and user programs cannot. A flag not in the table gets -1 and cpu.c reads
 * /proc/cpuinfo for it, so an incomplete table costs launch time, never a wrong answer.
 *
 * aarch64 is left to /proc/cpuinfo: there getauxval(AT_HWCAP) and AT_HWCAP2 are the cheap
 * source (no system call: the kernel hands them to every program), and the kernel writes
 * its "Features" line from exactly those bits (arch/arm64/kernel/cpuinfo.c, hwcap_str),
 * so a name -> bit table here would answer the same. Not done: no aarch64 host to test it
 * on.
 */
#include <stddef.h>
#include <string.h>

#include "cpu.h"

#if defined(__x86_64__)
#include <cpuid.h>

/* The (leaf, subleaf) pairs of CPUID that the table's flags are in. */
enum leaf { L1, L7, L7_1, LD_1, LX1, LX8, LEAVES };
static const unsigned LEAF[LEAVES][2] = {
    [L1] = {1, 0},          [L7] = {7, 0},           [L7_1] = {7, 1},
    [LD_1] = {0xd, 1},      [LX1] = {0x80000001, 0}, [LX8] = {0x80000008, 0}};
enum reg { EAX, EBX, ECX, EDX };

/* XCR0 state components (Intel SDM vol. 1, 13.1) a flag's instructions need enabled. */
#define XSAVE_ON 0x3       /* x87 | SSE: set whenever the OS uses XSAVE at all */
#define AVX 0x6            /* SSE | upper halves of YMM */
#define AVX512 (AVX | 0xe0) /* + opmask, upper halves of ZMM0-15, ZMM16-31 */
#define PKRU 0x200
#define TILES 0x60000      /* AMX: TILECFG | TILEDATA */

struct flag {
    const char *name; /* as /proc/cpuinfo spells it */
    unsigned char leaf, reg, bit;
    unsigned state; /* XCR0 bits needed as well */
};

/* Sorted by name (strcmp), for a binary search. */
static const struct flag FLAGS[] = {
    {"3dnow", LX1, EDX, 31, 0},
    {"3dnowext", LX1, EDX, 30, 0},
    {"abm", LX1, ECX, 5, 0},
    {"adx", L7, EBX, 19, 0},
    {"aes", L1, ECX, 25, 0},
    {"amx_bf16", L7, EDX, 22, TILES},
    {"amx_int8", L7, EDX, 25, TILES},
    {"amx_tile", L7, EDX, 24, TILES},
    {"avx", L1, ECX, 28, AVX},
    {"avx2", L7, EBX, 5, AVX},
    {"avx512_bf16", L7_1, EAX, 5, AVX512},
    {"avx512_bitalg", L7, ECX, 12, AVX512},
    {"avx512_vbmi2", L7, ECX, 6, AVX512},
    {"avx512_vnni", L7, ECX, 11, AVX512},
    {"avx512_vp2intersect", L7, EDX, 8, AVX512},
    {"avx512_vpopcntdq", L7, ECX, 14, AVX512},
    {"avx512bw", L7, EBX, 30, AVX512},
    {"avx512cd", L7, EBX, 28, AVX512},
    {"avx512dq", L7, EBX, 17, AVX512},
    {"avx512er", L7, EBX, 27, AVX512},
    {"avx512f", L7, EBX, 16, AVX512},
    {"avx512ifma", L7, EBX, 21, AVX512},
    {"avx512pf", L7, EBX, 26, AVX512},
    {"avx512vbmi", L7, ECX, 1, AVX512},
    {"avx512vl", L7, EBX, 31, AVX512},
    {"avx_vnni", L7_1, EAX, 4, AVX},
    {"bmi1", L7, EBX, 3, 0},
    {"bmi2", L7, EBX, 8, 0},
    {"cldemote", L7, ECX, 25, 0},
    {"clflushopt", L7, EBX, 23, 0},
    {"clwb", L7, EBX, 24, 0},
    {"clzero", LX8, EBX, 0, 0},
    {"cppc", LX8, EBX, 27, 0},
    {"cx16", L1, ECX, 13, 0},
    {"f16c", L1, ECX, 29, AVX},
    {"flush_l1d", L7, EDX, 28, 0},
    {"fma", L1, ECX, 12, AVX},
    {"fma4", LX1, ECX, 16, AVX},
    {"fsgsbase", L7, EBX, 0, 0},
    {"gfni", L7, ECX, 8, 0},
    {"lahf_lm", LX1, ECX, 0, 0},
    {"mmx", L1, EDX, 23, 0},
    {"movbe", L1, ECX, 22, 0},
    {"movdir64b", L7, ECX, 28, 0},
    {"movdiri", L7, ECX, 27, 0},
    {"pclmulqdq", L1, ECX, 1, 0},
    {"pku", L7, ECX, 3, PKRU},
    {"pni", L1, ECX, 0, 0},
    {"popcnt", L1, ECX, 23, 0},
    {"rdpid", L7, ECX, 22, 0},
    {"rdrand", L1, ECX, 30, 0},
    {"rdseed", L7, EBX, 18, 0},
    {"serialize", L7, EDX, 14, 0},
    {"sha_ni", L7, EBX, 29, 0},
    {"sse", L1, EDX, 25, 0},
    {"sse2", L1, EDX, 26, 0},
    {"sse4_1", L1, ECX, 19, 0},
    {"sse4_2", L1, ECX, 20, 0},
    {"sse4a", LX1, ECX, 6, 0},
    {"ssse3", L1, ECX, 9, 0},
    {"tbm", LX1, ECX, 21, 0},
    {"tsc_adjust", L7, EBX, 1, 0},
    {"vaes", L7, ECX, 9, AVX},
    {"vpclmulqdq", L7, ECX, 10, AVX},
    {"waitpkg", L7, ECX, 5, 0},
    {"xop", LX1, ECX, 11, AVX},
    {"xsave", L1, ECX, 26, XSAVE_ON},
    {"xsavec", LD_1, EAX, 1, XSAVE_ON},
    {"xsaveopt", LD_1, EAX, 0, XSAVE_ON},
};

/* How word[0..len) sorts against `name` (strcmp's sign). */
static int order(const char *word, size_t len, const char *name) {
    int o = strncmp(word, name, len);
    return o ? o : -(name[len] != '\0'); /* word is a beginning of name: before it */
}

/* The table's entry for word[0..len), or NULL. Each lookup resumes where the previous
   one stopped, from the start only for a word that sorts before it: the entry table
   lists a target's flags sorted (cpu.py), so a line costs one walk through the table.
   (A binary search for each flag costs twice as much in a new process, where every
   branch of it is mispredicted: 4 us against 2 for 50 flags on a 2-core VM.) */
static const struct flag *find(const char *word, size_t len) {
    static size_t next;
    size_t n = sizeof FLAGS / sizeof *FLAGS;
    size_t i = next < n && order(word, len, FLAGS[next].name) >= 0 ? next : 0;
    int o = 1;
    while (i < n && (o = order(word, len, FLAGS[i].name)) > 0) i++;
    next = i;
    return o ? NULL : &FLAGS[i];
}

/* The highest leaf of `leaf`'s range (basic or 0x8000....), asked once per range: a leaf
   above it answers another leaf's bits on Intel CPUs. (gcc's __get_cpuid_count asks it
   at every call: one more VM exit per leaf.) */
static unsigned highest(unsigned leaf) {
    static unsigned top[2];
    static int asked[2];
    int range = leaf >> 31;
    if (!asked[range]) top[range] = __get_cpuid_max(leaf & 0x80000000, NULL), asked[range] = 1;
    return top[range];
}

/* EAX..EDX of the table's leaf `l` from the CPUID instruction, asked at its first use;
   zeros (no flag) when the CPU has no such leaf. */
static const unsigned *asked_of_cpu(enum leaf l) {
    static unsigned got[LEAVES][4];
    static int asked[LEAVES];
    unsigned *r = got[l];
    if (!asked[l] && LEAF[l][0] <= highest(LEAF[l][0]))
        __cpuid_count(LEAF[l][0], LEAF[l][1], r[EAX], r[EBX], r[ECX], r[EDX]);
    asked[l] = 1;
    return r;
}

#if __has_include(<sys/platform/x86.h>) && !defined(CPUID_NOT_FROM_GLIBC)
#include <sys/platform/x86.h>
#define FROM_GLIBC 1
/* glibc's indices (<sys/platform/x86.h>, glibc >= 2.33) of the table's leaves. */
static const unsigned GLIBC_INDEX[LEAVES] = {
    [L1] = CPUID_INDEX_1,          [L7] = CPUID_INDEX_7,
    [L7_1] = CPUID_INDEX_7_ECX_1,  [LD_1] = CPUID_INDEX_D_ECX_1,
    [LX1] = CPUID_INDEX_80000001,  [LX8] = CPUID_INDEX_80000008};
#else
#define FROM_GLIBC 0
#endif

/* EAX..EDX of the table's leaf `l`. glibc asked the CPU for all of them as the program
   started (its string functions are chosen by them) and keeps the raw registers: reading
   its copy costs no CPUID at all. Its copy is empty for a vendor it does not know (leaf
   1's EDX, nonzero on every x86_64 CPU, says so); then, or without glibc's interface
   (musl, glibc < 2.33; CPUID_NOT_FROM_GLIBC: the tests' way to run this path), the CPU
   is asked. */
static const unsigned *regs(enum leaf l) {
#if FROM_GLIBC
    if (__x86_get_cpuid_feature_leaf(CPUID_INDEX_1)->cpuid_array[EDX])
        return __x86_get_cpuid_feature_leaf(GLIBC_INDEX[l])->cpuid_array;
#endif
    return asked_of_cpu(l);
}

/* The state components the OS enabled (low half of XCR0: the table's are all there); 0
   when it enabled no XSAVE, where XGETBV would fault (CPUID.1:ECX.OSXSAVE clear). */
static unsigned enabled_state(void) {
    static unsigned xcr0;
    static int asked;
    if (!asked && regs(L1)[ECX] >> 27 & 1) {
        unsigned high;
        __asm__("xgetbv" : "=a"(xcr0), "=d"(high) : "c"(0));
    }
    asked = 1;
    return xcr0;
}

int cpuid_answers(void) {
    return 1;
}

int cpuid_has(const char *word, size_t len) {
    const struct flag *f = find(word, len);
    if (!f) return -1;
    return (regs(f->leaf)[f->reg] >> f->bit & 1) && (enabled_state() & f->state) == f->state;
}

#else

int cpuid_answers(void) {
    return 0;
}

int cpuid_has(const char *word, size_t len) {
    (void)word, (void)len;
    return -1;
}

#endif
