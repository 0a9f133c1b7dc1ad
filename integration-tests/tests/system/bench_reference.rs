//! The bench's login reference measures argon2id with the user service's own default
//! cost: a change to one without the other would make the ratio compare unlike things.

use user_service::domain::password::HashCost;

#[test]
fn the_bench_argon2_reference_uses_the_user_services_default_cost() {
    let cost = HashCost::default();
    assert_eq!(trellis_bench::argon2_rate::MEMORY_KIB, cost.memory_kib);
    assert_eq!(trellis_bench::argon2_rate::ITERATIONS, cost.iterations);
    assert_eq!(trellis_bench::argon2_rate::PARALLELISM, cost.parallelism);
}
