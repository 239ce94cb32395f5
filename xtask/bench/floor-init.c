/* The floor of `cargo xtask bench`: an init that ends the VM at once.
 * With `reboot=t` on the kernel command line the reboot is a triple
 * fault, which `-no-reboot` turns into a QEMU exit. */
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    reboot(RB_AUTOBOOT);
    for (;;)
        pause();
}
