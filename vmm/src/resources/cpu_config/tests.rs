use super::*;

fn template(json: &str) -> Result<CpuConfig, ResourceError> {
    parse_json::<CpuConfig>(json)?.validated()
}

#[test]
fn parses_firecrackers_template_shape() {
    let t = template(
        r#"{
          "kvm_capabilities": ["171", "!172"],
          "cpuid_modifiers": [
            {"leaf": "0x1", "subleaf": "0x0", "flags": 0,
             "modifiers": [
               {"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxx0xxxxxxxxxxxxx"},
               {"register": "edx", "bitmap": "0b000x0xxxx00xx0xxxxx1xxxx1xxxxxxx"}
             ]},
            {"leaf": "0b111", "subleaf": "0", "flags": 1, "modifiers": []}
          ],
          "msr_modifiers": [
            {"addr": "0x10a", "bitmap": "0b0000000000000000000000000000000000001100000010100000110001001100"},
            {"addr": "631", "bitmap": "0b0000_0001_xxxx"}
          ]
        }"#,
    )
    .unwrap();
    assert_eq!(
        t.kvm_capabilities(),
        [KvmCapability::Add(171), KvmCapability::Remove(172)]
    );
    let leaves = t.cpuid_modifiers();
    assert_eq!(
        (leaves[0].leaf, leaves[0].subleaf, leaves[0].flags),
        (1, 0, 0)
    );
    assert_eq!(
        (leaves[1].leaf, leaves[1].subleaf, leaves[1].flags),
        (7, 0, 1)
    );
    let ecx = leaves[0].modifiers[0];
    assert_eq!(ecx.register, CpuidRegister::Ecx);
    assert_eq!(ecx.bitmap.mask, 1 << 13);
    assert_eq!(ecx.bitmap.value, 0);
    assert_eq!(ecx.bitmap.apply(0xffff_ffff), 0xffff_dfff);
    let edx = leaves[0].modifiers[1].bitmap;
    assert_eq!(edx.apply(0), 1 << 12 | 1 << 7);
    assert_eq!(edx.mask.count_ones(), 9);
    assert_eq!(edx.apply(u64::from(u32::MAX)) >> 29, 0b000);
    let msrs = t.msr_modifiers();
    assert_eq!(msrs[0].addr, 0x10a);
    assert_eq!(msrs[0].bitmap.mask, u64::MAX);
    assert_eq!(msrs[0].bitmap.value, 0x0c0a_0c4c);
    assert_eq!(msrs[1].addr, 0x277);
    // Only the 8 bits written are touched: 0000_0001 at bits 11..4.
    assert_eq!(msrs[1].bitmap.mask, 0xff0);
    assert_eq!(
        msrs[1].bitmap.apply(0xffff_ffff_ffff_ffff),
        0xffff_ffff_ffff_f01f
    );
}

#[test]
fn empty_and_null_lists_change_nothing() {
    for json in [
        "{}",
        r#"{"kvm_capabilities": null, "cpuid_modifiers": null, "msr_modifiers": null}"#,
        r#"{"kvm_capabilities": [], "cpuid_modifiers": [], "msr_modifiers": [],
            "reg_modifiers": [], "vcpu_features": null}"#,
    ] {
        let t = template(json).unwrap();
        assert!(t.kvm_capabilities().is_empty());
        assert!(t.cpuid_modifiers().is_empty());
        assert!(t.msr_modifiers().is_empty());
    }
}

#[test]
fn bad_values_are_refused_by_name() {
    let cases = [
        (
            r#"{"cpuid_modifiers": [{"leaf": "0xzz", "subleaf": "0", "flags": 0, "modifiers": []}]}"#,
            "\"0xzz\" is not a 32-bit number",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "0x100000000", "subleaf": "0", "flags": 0, "modifiers": []}]}"#,
            "is not a 32-bit number",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0,
                "modifiers": [{"register": "esi", "bitmap": "0b1"}]}]}"#,
            "unknown variant `esi`",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0,
                "modifiers": [{"register": "eax", "bitmap": "0b1x2"}]}]}"#,
            "has '2'",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0,
                "modifiers": [{"register": "eax", "bitmap": "0b111111111111111111111111111111111"}]}]}"#,
            "more than 32 bits",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "modifiers": []}]}"#,
            "missing field `flags`",
        ),
        (
            r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b1", "mask": 1}]}"#,
            "unknown field `mask`",
        ),
        (
            r#"{"kvm_capabilities": ["0x10"]}"#,
            "is not a decimal KVM capability",
        ),
        (
            r#"{"kvm_capabilities": ["!"]}"#,
            "is not a decimal KVM capability",
        ),
        (r#"{"cpuid": []}"#, "unknown field `cpuid`"),
        (
            r#"{"reg_modifiers": [{"addr": "0x1", "bitmap": "0b1"}]}"#,
            "cpu-config: reg_modifiers are for aarch64 hosts",
        ),
        (
            r#"{"vcpu_features": [{"index": 0, "bitmap": "0b1"}]}"#,
            "cpu-config: vcpu_features are for aarch64 hosts",
        ),
    ];
    for (json, want) in cases {
        let e = template(json).unwrap_err().to_string();
        assert!(e.contains(want), "{json}: {e}");
    }
}

#[test]
fn list_sizes_are_bounded() {
    let leaf = r#"{"leaf": "1", "subleaf": "0", "flags": 0, "modifiers": []}"#;
    let many = vec![leaf; MAX_CPUID_MODIFIERS + 1].join(",");
    let e = template(&format!(r#"{{"cpuid_modifiers": [{many}]}}"#)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cpu-config: {} cpuid_modifiers, at most {MAX_CPUID_MODIFIERS} are accepted",
            MAX_CPUID_MODIFIERS + 1
        )
    );
    let reg = r#"{"register": "eax", "bitmap": "0b1"}"#;
    let regs = vec![reg; MAX_REGISTER_MODIFIERS + 1].join(",");
    let e = template(&format!(
        r#"{{"cpuid_modifiers": [{{"leaf": "1", "subleaf": "0", "flags": 0, "modifiers": [{regs}]}}]}}"#
    ))
    .unwrap_err();
    assert!(e.to_string().contains("cpuid_modifiers[].modifiers"), "{e}");
}

#[test]
fn round_trips_through_its_json() {
    let t = template(
        r#"{"kvm_capabilities": ["!5"], "cpuid_modifiers": [{"leaf": "0x40000001", "subleaf": "0", "flags": 1,
            "modifiers": [{"register": "eax", "bitmap": "0bxxxx0xxxxxxxxxxxxxxxxxxxxxxxxx1x"}]}],
            "msr_modifiers": [{"addr": "0x277", "bitmap": "0b01"}]}"#,
    )
    .unwrap();
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains(r#""leaf":"0x40000001""#), "{json}");
    assert!(
        json.contains(r#""bitmap":"0bxxxx0xxxxxxxxxxxxxxxxxxxxxxxxx1x""#),
        "{json}"
    );
    assert!(json.contains(r#""kvm_capabilities":["!5"]"#), "{json}");
    assert_eq!(template(&json).unwrap(), t);
}

#[test]
fn the_config_file_may_name_a_template_file() {
    let dir = kiln_tests::ScratchDir::new("kiln-cpu-config");
    let path = dir.join("t.json");
    std::fs::write(
        &path,
        r#"{"msr_modifiers": [{"addr": "0x277", "bitmap": "0b1"}]}"#,
    )
    .unwrap();
    let src: CpuConfigSource = parse_json(&format!("{:?}", path.to_str().unwrap())).unwrap();
    assert_eq!(src, CpuConfigSource::Path(path.to_str().unwrap().into()));
    let t = src.load().unwrap();
    assert_eq!(t.msr_modifiers()[0].addr, 0x277);
    let inline: CpuConfigSource = parse_json(r#"{"kvm_capabilities": ["1"]}"#).unwrap();
    assert_eq!(
        inline.load().unwrap().kvm_capabilities(),
        [KvmCapability::Add(1)]
    );
    let e = CpuConfigSource::Path(dir.join("nope").to_str().unwrap().into())
        .load()
        .unwrap_err();
    assert!(e.to_string().starts_with("cpu-config: "), "{e}");
    std::fs::write(&path, "{\"msr\": 1}").unwrap();
    let e = CpuConfigSource::Path(path.to_str().unwrap().into())
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("unknown field `msr`"), "{e}");
    let e = parse_json::<CpuConfigSource>("5").unwrap_err();
    assert!(e.to_string().contains("invalid type"), "{e}");
}
