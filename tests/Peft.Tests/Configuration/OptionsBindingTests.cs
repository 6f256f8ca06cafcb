using Microsoft.Extensions.Configuration;
using Peft.Abstractions;
using Peft.Abstractions.Configuration;

namespace Peft.Tests.Configuration;

public sealed class OptionsBindingTests
{
    sealed class SampleOptions : IValidatableOptions
    {
        public int R { get; set; } = 8;
        [ConfigurationKeyName("lora_alpha")] public double LoraAlpha { get; set; } = 8;
        [ConfigurationKeyName("target_modules")] public List<string> TargetModules { get; set; } = new();

        public IEnumerable<(string Key, object? Value, string Problem)> Validate()
        {
            if (R <= 0) yield return ("r", R, "must be a positive integer");
        }
    }

    static IConfigurationSection Section(params (string, string)[] pairs) =>
        new ConfigurationBuilder().AddInMemoryCollection(pairs.Select(p => new KeyValuePair<string, string?>("method:" + p.Item1, p.Item2))).Build().GetSection("method");

    [Fact]
    public void Binds_snake_case_keys()
    {
        var o = OptionsBinding.Bind<SampleOptions>(Section(("name", "lora"), ("r", "16"), ("lora_alpha", "32"), ("target_modules:0", "q_proj")), "name");
        o.R.Should().Be(16);
        o.LoraAlpha.Should().Be(32);
        o.TargetModules.Should().Equal("q_proj");
    }

    [Fact]
    public void Unknown_key_names_key_and_value()
    {
        var act = () => OptionsBinding.Bind<SampleOptions>(Section(("rank", "16")));
        act.Should().Throw<PeftConfigurationException>().WithMessage("*'method:rank'*'16'*unknown key*");
    }

    [Fact]
    public void Bad_value_names_key_and_value()
    {
        var act = () => OptionsBinding.Bind<SampleOptions>(Section(("r", "sixteen")));
        act.Should().Throw<PeftConfigurationException>().WithMessage("*'method:r'*'sixteen'*");
    }

    [Fact]
    public void Validation_failure_names_key_and_value()
    {
        var act = () => OptionsBinding.Bind<SampleOptions>(Section(("r", "-3")));
        act.Should().Throw<PeftConfigurationException>().WithMessage("*'method:r'*'-3'*positive*");
    }
}

public sealed class OptionsBindingListTests
{
    sealed class ListOptions
    {
        [ConfigurationKeyName("target_modules")] public List<string> TargetModules { get; set; } = new();
    }

    [Fact]
    public void A_single_value_where_a_list_is_expected_is_an_error()
    {
        var section = new ConfigurationBuilder().AddInMemoryCollection(new[] { new KeyValuePair<string, string?>("m:target_modules", "q_proj") }).Build().GetSection("m");
        var act = () => OptionsBinding.Bind<ListOptions>(section);
        act.Should().Throw<PeftConfigurationException>().WithMessage("*'m:target_modules'*'q_proj'*list*");
    }
}
