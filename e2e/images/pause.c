/* The pod sandbox's first process: sleeps until SIGTERM/SIGINT and exits 0. SIGCHLD is
 * ignored so the kernel reaps any orphan re-parented to it. Built static by build.sh. */
#include <signal.h>
#include <unistd.h>
#include <stdlib.h>

static void done(int sig) { (void)sig; _exit(0); }

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = done;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGCHLD, SIG_IGN);
    for (;;) pause();
}
