//! E.164 normalisation: runs on every INVITE and every admin write.
use criterion::{criterion_group, criterion_main, Criterion};
use dialmark_schemas::number::NumberingPlan;

fn normalise(c: &mut Criterion) {
    let plan = NumberingPlan::default();
    c.bench_function("normalise 5 forms", |b| {
        b.iter(|| {
            for s in dialmark_benches::NUMBER_SAMPLES {
                std::hint::black_box(plan.normalize(std::hint::black_box(s)).ok());
            }
        })
    });
}

criterion_group!(benches, normalise);
criterion_main!(benches);
