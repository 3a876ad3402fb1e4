use super::*;
use crate::identity::KeyType;

fn vm_deployment(twin: u32) -> Deployment {
    let network = Network {
        ip_range: Some("10.20.0.0/16".parse().unwrap()),
        subnet: Some("10.20.2.0/24".parse().unwrap()),
        wireguard_private_key: "k".into(),
        wireguard_listen_port: 5000,
        peers: vec![],
        mycelium: None,
    };
    let vm = ZMachine {
        flist: "f".into(),
        network: MachineNetwork {
            interfaces: vec![MachineInterface {
                network: "net".into(),
                ip: Some("10.20.2.2".parse().unwrap()),
            }],
            ..Default::default()
        },
        compute_capacity: ComputeCapacity {
            cpu: 1,
            memory: 1024,
        },
        ..Default::default()
    };
    Deployment::new(
        twin,
        vec![
            Workload::new("net", WorkloadData::Network(network)),
            Workload::new("vm", WorkloadData::ZMachine(Box::new(vm))),
        ],
    )
}

#[test]
fn challenge_text_layout() {
    let d = vm_deployment(9);
    assert_eq!(
        d.challenge_text().unwrap(),
        "090\
         0netnetwork10.20.0.0/1610.20.2.0/24k5000\
         0vmzmachineffalsenet10.20.2.2011024\
         9false11"
    );
    assert_eq!(d.contract_hash_hex().unwrap().len(), 32);
}

#[test]
fn contract_id_and_results_do_not_change_the_hash() {
    let d = vm_deployment(9);
    let mut changed = d.clone();
    changed.contract_id = 77;
    changed.workloads[0].result.state = Some(ResultState::Ok);
    assert_eq!(
        d.challenge_hash().unwrap(),
        changed.challenge_hash().unwrap()
    );
    changed.workloads[0].metadata = "m".into();
    assert_ne!(
        d.challenge_hash().unwrap(),
        changed.challenge_hash().unwrap()
    );
}

#[test]
fn unknown_types_round_trip_but_do_not_hash() {
    let json = r#"{"version":0,"name":"db","type":"zdb","data":{"size":1},"metadata":"",
        "description":"","result":{"created":0,"state":"","message":"","data":null}}"#;
    let wl: Workload = serde_json::from_str(json).unwrap();
    assert_eq!(wl.data.kind(), "zdb");
    let d = Deployment::new(1, vec![wl]);
    assert!(matches!(
        d.challenge_text(),
        Err(DeploymentError::UnsupportedWorkloadType { .. })
    ));
    let back = serde_json::to_value(&d.workloads[0]).unwrap();
    assert_eq!(back["data"]["size"], 1);
}

#[test]
fn json_shape_matches_zos() {
    let mut d = vm_deployment(9);
    d.workloads[1].result = WorkloadResult {
        created: 5,
        state: Some(ResultState::Ok),
        message: String::new(),
        data: serde_json::json!({"id":"x","ip":"10.20.2.2","planetary_ip":"","mycelium_ip":"","console_url":""}),
    };
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["workloads"][0]["type"], "network");
    assert_eq!(json["workloads"][0]["data"]["ip_range"], "10.20.0.0/16");
    assert_eq!(json["workloads"][0]["result"]["state"], "");
    assert_eq!(json["workloads"][1]["result"]["state"], "ok");
    assert_eq!(json["signature_requirement"]["requests"][0]["weight"], 1);
    let back: Deployment = serde_json::from_value(json).unwrap();
    assert_eq!(back, d);
    let result: ZMachineResult = back.workloads[1].result.data_as().unwrap();
    assert_eq!(result.ip, "10.20.2.2");
}

#[test]
fn result_states_parse() {
    for (text, state) in [
        ("init", ResultState::Init),
        ("ok", ResultState::Ok),
        ("error", ResultState::Error),
        ("deleted", ResultState::Deleted),
        ("paused", ResultState::Paused),
        ("unchanged", ResultState::Unchanged),
    ] {
        let r: WorkloadResult = serde_json::from_str(&format!(r#"{{"state":"{text}"}}"#)).unwrap();
        assert_eq!(r.state, Some(state));
    }
    assert!(serde_json::from_str::<WorkloadResult>(r#"{"state":"weird"}"#).is_err());
    assert!(ResultState::Paused.is_okay() && !ResultState::Init.is_okay());
}

#[test]
fn sign_and_verify_like_zos() {
    for key_type in [KeyType::Sr25519, KeyType::Ed25519] {
        let id = Identity::from_seed(&[5u8; 32], key_type).unwrap();
        let mut d = vm_deployment(9);
        d.sign(9, &id).unwrap();
        d.sign(9, &id).unwrap();
        assert_eq!(
            d.signature_requirement.signatures.len(),
            1,
            "re-signing replaces"
        );
        assert_eq!(
            d.signature_requirement.signatures[0].signature_type,
            key_type.signature_type()
        );
        let keys = |twin| (twin == 9).then(|| id.public_key());
        verify_deployment_signatures(&d, keys).unwrap();

        let mut tampered = d.clone();
        tampered.metadata = "x".into();
        assert!(matches!(
            verify_deployment_signatures(&tampered, keys),
            Err(DeploymentError::BadSignature { twin: 9, .. })
        ));
        // Changing the contract id after signing is the normal flow and stays valid.
        let mut with_contract = d.clone();
        with_contract.contract_id = 1234;
        verify_deployment_signatures(&with_contract, keys).unwrap();
    }
}

#[test]
fn verify_rules_follow_zos() {
    let id = Identity::from_seed(&[5u8; 32], KeyType::Sr25519).unwrap();
    let keys = |twin| (twin == 9 || twin == 10).then(|| id.public_key());
    let mut d = vm_deployment(9);
    assert!(matches!(
        verify_deployment_signatures(&d, keys),
        Err(DeploymentError::MissingSignature(9))
    ));
    d.sign(9, &id).unwrap();
    // An optional second request without a signature still fails in zos.
    let mut optional = d.clone();
    optional
        .signature_requirement
        .requests
        .push(SignatureRequest {
            twin_id: 10,
            required: false,
            weight: 1,
        });
    optional.sign(9, &id).unwrap();
    assert!(verify_deployment_signatures(&optional, keys).is_err());
    // Weight.
    let mut heavy = vm_deployment(9);
    heavy.signature_requirement.weight_required = 2;
    heavy.sign(9, &id).unwrap();
    assert!(matches!(
        verify_deployment_signatures(&heavy, keys),
        Err(DeploymentError::WeightNotReached)
    ));
    // Originator must be requested.
    let mut orphan = vm_deployment(9);
    orphan.signature_requirement.requests[0].twin_id = 10;
    orphan.sign(10, &id).unwrap();
    assert!(matches!(
        verify_deployment_signatures(&orphan, keys),
        Err(DeploymentError::OriginatorNotRequested)
    ));
    // Unknown twin key.
    assert!(matches!(
        verify_deployment_signatures(&d, |_| None),
        Err(DeploymentError::UnknownTwin(9))
    ));
}

#[test]
fn polka_wallet_style_signs_the_wrapped_digest() {
    let id = Identity::from_seed(&[5u8; 32], KeyType::Ed25519).unwrap();
    let mut d = vm_deployment(9);
    d.signature_requirement.signature_style = SIGNATURE_STYLE_POLKA_WALLET.into();
    d.sign(9, &id).unwrap();
    let message = format!("<Bytes>{}</Bytes>", d.contract_hash_hex().unwrap());
    let sig = hex::decode(&d.signature_requirement.signatures[0].signature).unwrap();
    crate::identity::verify_signature(KeyType::Ed25519, &id.public_key(), message.as_bytes(), &sig)
        .unwrap();
    verify_deployment_signatures(&d, |_| Some(id.public_key())).unwrap();
}

#[test]
fn workload_names() {
    assert_eq!(sanitize_workload_name("build-42.linux"), "build_42_linux");
    assert_eq!(sanitize_workload_name(""), "w_");
    assert_eq!(sanitize_workload_name("ygg"), "w_ygg");
    assert_eq!(sanitize_workload_name("é"), "_");
    assert_eq!(sanitize_workload_name(&"a".repeat(50)).len(), 36);
    for raw in ["build-42.linux", "", "ygg", "x y", &"b".repeat(99)] {
        validate_workload_name(&sanitize_workload_name(raw)).unwrap();
    }
    assert!(validate_workload_name("a-b").is_err());
    assert!(validate_workload_name("ygg").is_err());
    assert!(validate_workload_name(&"a".repeat(37)).is_err());
}

#[test]
fn deprecated_ipv4_has_empty_data_and_challenge() {
    // The TS SDK refuses this type, so no golden vector; zos's PublicIP4.Challenge writes nothing.
    let wl: Workload = serde_json::from_str(r#"{"name":"old","type":"ipv4","data":{}}"#).unwrap();
    assert_eq!(wl.data, WorkloadData::PublicIpV4);
    let d = Deployment::new(3, vec![wl]);
    // Version 0, twin 3, empty metadata and description, expiration 0; the workload; the request.
    assert_eq!(d.challenge_text().unwrap(), "0300oldipv43false11");
}
