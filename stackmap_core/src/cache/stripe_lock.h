/*
 * stripe_lock.h -- the item locks ("stripes"), as a small futex mutex.
 *
 * Every request takes its key's stripe once, and the batch prefetch tries it
 * twice more, so a get pays for three lock/unlock pairs.  glibc's mutex is a
 * call each way that also keeps an owner and a user count; perf put the
 * three pairs at over 2% of the uring server's CPU.  These stay inline: an
 * uncontended lock is one compare-and-swap, an unlock one exchange.  A
 * contended lock spins briefly (holders keep a stripe for a lookup), then
 * sleeps on a futex, so a holder that blocks (an admin walk writing a
 * snapshot) costs waiters no CPU.  States: 0 free, 1 held, 2 held and
 * someone may be asleep on it (the unlocker then wakes one).
 */
#ifndef SM_STRIPE_LOCK_H
#define SM_STRIPE_LOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct stripe_lock {
    _Atomic uint32_t state; /* 0 free, 1 held, 2 held with possible sleepers */
} stripe_lock;

/* The slow halves (stripe_lock.c). */
void stripe_lock_wait(stripe_lock *l);
void stripe_lock_wake(stripe_lock *l);

static inline void stripe_lock_init(stripe_lock *l)
{
    atomic_init(&l->state, 0);
}

static inline bool stripe_trylock(stripe_lock *l)
{
    uint32_t free_state = 0;
    return atomic_compare_exchange_strong_explicit(&l->state, &free_state, 1, memory_order_acquire,
                                                   memory_order_relaxed);
}

static inline void stripe_lock_take(stripe_lock *l)
{
    if (!stripe_trylock(l))
        stripe_lock_wait(l);
}

static inline void stripe_unlock(stripe_lock *l)
{
    if (atomic_exchange_explicit(&l->state, 0, memory_order_release) == 2)
        stripe_lock_wake(l);
}

#endif
