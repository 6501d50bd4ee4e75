//! The AWS settings every AWS client floe makes starts from: region, profile, endpoint and the
//! standard credential chain (environment, shared config and credentials files, web identity,
//! ECS and EC2 instance roles), as `aws-config` resolves them.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::config::AwsConfig;

/// The shared SDK configuration for `aws`. Calls time out (connect 3 s, each attempt 10 s), so
/// an unreachable endpoint is reported within seconds instead of hanging.
pub async fn sdk_config(aws: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(20))
            .build(),
    );
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = &aws.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(endpoint) = &aws.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// "region eu-west-1, endpoint http://..." for messages.
pub fn describe(sdk: &SdkConfig, endpoint: Option<&str>) -> String {
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "<no region>".into());
    match endpoint {
        Some(e) => format!("region {region}, endpoint {e}"),
        None => format!("region {region}"),
    }
}

/// A service error's code and message.
pub fn service_message(e: &(impl aws_sdk_secretsmanager::error::ProvideErrorMetadata + std::fmt::Display)) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(m)) => format!("{code}: {m}"),
        (Some(code), None) => code.to_owned(),
        _ => e.to_string(),
    }
}

/// An error with its sources ("dispatch failure: io error: connection refused").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
