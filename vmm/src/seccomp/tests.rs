use super::*;

#[test]
fn the_embedded_filters_load() {
    let set = FilterSet::embedded().unwrap();
    for kind in ThreadKind::ALL {
        assert!(!set.get(kind).is_empty());
    }
}
