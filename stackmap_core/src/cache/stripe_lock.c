/*
 * stripe_lock.c -- the contended paths of the stripe lock (stripe_lock.h):
 * a short spin, then a futex sleep; and the wake-up an unlock owes a
 * sleeper.  Nothing here runs while a stripe is free.
 */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "stripe_lock.h"

/* Tries at taking a held lock before sleeping on it. */
#define SPINS 100

static void futex_call(stripe_lock *l, int op, uint32_t val)
{
    syscall(SYS_futex, &l->state, op, val, NULL, NULL, 0);
}

void stripe_lock_wait(stripe_lock *l)
{
    for (int i = 0; i < SPINS; i++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (atomic_load_explicit(&l->state, memory_order_relaxed) == 0 && stripe_trylock(l))
            return;
    }
    /* Mark it contended; whoever holds it then wakes a sleeper on unlock.
     * Taking it this way leaves it at 2, which at worst costs one
     * unneeded wake-up. */
    while (atomic_exchange_explicit(&l->state, 2, memory_order_acquire) != 0)
        futex_call(l, FUTEX_WAIT_PRIVATE, 2);
}

void stripe_lock_wake(stripe_lock *l)
{
    futex_call(l, FUTEX_WAKE_PRIVATE, 1);
}
