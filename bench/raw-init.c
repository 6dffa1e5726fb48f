/* The raw-boot baseline's init: prints its CLOCK_BOOTTIME (the kernel's share of the boot) on the
 * console and ends the VM at once (reboot=t and -no-reboot make the restart a QEMU exit). */
#include <stdio.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_BOOTTIME, &t);
    printf("raw-init boottime_ns=%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
    fflush(stdout);
    reboot(RB_AUTOBOOT);
    return 1;
}
