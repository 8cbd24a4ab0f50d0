//! A one-shot answer from the writer thread to a caller that awaits it instead of
//! blocking a thread ([`crate::AuditLog::append_async`]). No async runtime is needed:
//! the writer stores the answer and wakes the caller's task.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

enum State<T> {
    Waiting(Option<Waker>),
    Done(T),
    /// The sender went away without answering (the writer stopped), or the answer was
    /// taken.
    Closed,
}

type Shared<T> = Arc<Mutex<State<T>>>;

/// The writer's end. Dropped without [`AnswerSender::send`], it closes the answer, so
/// an awaiting caller never waits forever.
pub(crate) struct AnswerSender<T>(Option<Shared<T>>);

/// The caller's end: resolves to the answer, or `None` when the sender went away.
pub(crate) struct Answer<T>(Shared<T>);

pub(crate) fn answer<T>() -> (AnswerSender<T>, Answer<T>) {
    let shared = Arc::new(Mutex::new(State::Waiting(None)));
    (AnswerSender(Some(Arc::clone(&shared))), Answer(shared))
}

impl<T> AnswerSender<T> {
    pub(crate) fn send(mut self, value: T) {
        if let Some(shared) = self.0.take() {
            settle(&shared, State::Done(value));
        }
    }
}

impl<T> Drop for AnswerSender<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            settle(&shared, State::Closed);
        }
    }
}

fn settle<T>(shared: &Mutex<State<T>>, to: State<T>) {
    // A poisoned lock (a panic while holding it, which nothing here can do) still holds
    // a consistent state: take it over.
    let mut state = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let State::Waiting(waker) = std::mem::replace(&mut *state, to) {
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Future for Answer<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match std::mem::replace(&mut *state, State::Closed) {
            State::Done(value) => Poll::Ready(Some(value)),
            State::Closed => Poll::Ready(None),
            State::Waiting(_) => {
                *state = State::Waiting(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<T>(answer: &mut Answer<T>, waker: &Waker) -> Poll<Option<T>> {
        Pin::new(answer).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn the_answer_wakes_the_caller_and_a_dropped_sender_closes_it() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));

        let (tx, mut rx) = answer::<u32>();
        assert_eq!(poll(&mut rx, &waker), Poll::Pending);
        std::thread::spawn(move || tx.send(7)).join().unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Some(7)));

        let (tx, mut rx) = answer::<u32>();
        tx.send(8);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Some(8)));

        let (tx, mut rx) = answer::<u32>();
        assert_eq!(poll(&mut rx, &waker), Poll::Pending);
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(None));
    }
}
